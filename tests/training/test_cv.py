"""k-fold training (training/cv.py): planted signal vs shuffled labels, reruns, bad input, `ghanet train` end to end.

Data: the session's ``synthetic_study`` (phenotype drives hazard and planted genes, `preprocess-genomics` on
it, bags made straight from the phenotypes: no slides, so this is fast); the learning test makes a larger one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.core.errors import InputError, MismatchError
from ghanet_pipeline.demo.bags import bag_attrs, write_synthetic_bags
from ghanet_pipeline.demo.cohort import make_cohort, write_cohort_tables
from ghanet_pipeline.features.bags import write_bag
from ghanet_pipeline.genomics import GenomicsConfig, load_fold, preprocess_genomics
from ghanet_pipeline.models import load_checkpoint
from ghanet_pipeline.testing import TINY_TRAIN
from ghanet_pipeline.training.config import TrainConfig
from ghanet_pipeline.training.cv import train_cv
from ghanet_pipeline.training.data import balanced_order

#: tiny model for the plumbing tests (the architecture is the paper's, only narrower, 2 epochs)
TINY = TINY_TRAIN


@pytest.fixture
def tiny(synthetic_study):
    """(bags folder, genomics folder, cohort) of the session's synthetic study (read-only)."""
    return synthetic_study.features, synthetic_study.genomics, synthetic_study.cohort


def _copy_features(feats: Path, dst: Path) -> Path:
    shutil.copytree(feats, dst)
    return dst


def test_balanced_order_balances_classes():
    bins = np.array([0] * 40 + [1] * 5 + [2] * 5 + [3] * 10)
    cens = np.array([0, 1] * 30)
    order = np.concatenate([balanced_order(bins, cens, seed=0, fold=0, epoch=e) for e in range(200)])
    cls = bins[order] * 2 + cens[order]
    freq = np.bincount(cls, minlength=8) / len(cls)
    assert np.allclose(freq, 1 / 8, atol=0.015)
    assert (balanced_order(bins, cens, 0, 0, 1) == balanced_order(bins, cens, 0, 0, 1)).all()
    assert not (balanced_order(bins, cens, 0, 0, 1) == balanced_order(bins, cens, 0, 0, 2)).all()


def _permuted_survival(cohort, seed: int):
    """The cohort with (survival_months, censorship) permuted among cases: slides and genes keep their
    case, so nothing in the slides predicts these labels (the permutation-test null)."""
    cases = cohort.cases
    ids = list(cases.index)
    donor = dict(zip(ids, np.asarray(ids)[np.random.default_rng(seed).permutation(len(ids))], strict=False))
    table = cohort.table.copy()
    for col in ("survival_months", "censorship"):
        table[col] = [cases.loc[donor[c], col] for c in table.case_id]
    return replace(cohort, table=table)


@pytest.mark.slow
def test_planted_signal_learned_and_permuted_labels_are_not(tmp_path):
    """G-HANet finds the phenotype that drives hazard: mean validation c-index >= 0.70; the same model
    trained on survival labels shuffled among cases (and validated on them) stays near 0.5; the planted
    genes are reconstructed (Spearman across validation cases), the other genes are not.

    The shuffled labels are permuted for the whole cohort before preprocess-genomics, so bins, gene
    selection, training and validation all see them: a leak anywhere (e.g. validation labels used in
    training) would show up as a c-index above 0.5. (Permuting only the training labels and validating
    on the true ones is a coin flip here: the phenotype dominates the bags, so any model that picks up
    its direction by chance scores ~0.8 or ~0.2.) 96 cases: the authors' class-balanced sampler makes
    tiny cohorts very noisy (a class with one case gets 1/7 of all draws).
    """
    cohort = make_cohort(n_cases=96, seed=1)
    for name, co in (("real", cohort), ("shuffled", _permuted_survival(cohort, seed=1))):
        paths = write_cohort_tables(co, tmp_path / name / "inputs", table_name="table.csv")
        preprocess_genomics(GenomicsConfig(table=str(paths["table"]), families=str(paths["families"]), folds=3,
                                           de_method="ttest"), tmp_path / name)
    feats = tmp_path / "features"
    write_synthetic_bags(cohort, feats, n_patches=(60, 120), seed=1)
    # small settings: narrow model, short schedule, light dropout (with 0.25 and ~20 training steps per epoch
    # the risk direction on 32 validation cases still swings from epoch to epoch)
    cfg = TrainConfig(epochs=6, accum=4, lr=5e-4, dim=64, dropout=0.1)
    real = train_cv(feats, tmp_path / "real" / "genomics", tmp_path, cfg, run_name="real")
    ctrl = train_cv(feats, tmp_path / "shuffled" / "genomics", tmp_path, cfg, run_name="shuffled")
    assert all(r.status == "done" for r in real.folds + ctrl.folds)
    c_real, c_ctrl = real.metrics["c_index_mean"], ctrl.metrics["c_index_mean"]
    assert c_real >= 0.70 and min(real.metrics["c_index_per_fold"].values()) >= 0.6, real.metrics["c_index_per_fold"]
    assert abs(c_ctrl - 0.5) < 0.12 and c_real > c_ctrl + 0.15, (c_real, ctrl.metrics["c_index_per_fold"])
    assert real.metrics["logrank_p"] < 0.01

    genes = pd.concat(pd.read_csv(p) for p in real.run_dir.glob("fold_*/gene_spearman.csv"))
    genes["planted"] = genes.gene.str.replace(r"_(rnaseq|cnv|mut)$", "", regex=True).isin(cohort.planted_genes)
    planted = genes.loc[genes.planted, "spearman"].dropna()
    noise = genes.loc[~genes.planted, "spearman"].dropna()
    assert len(planted) >= 12  # the genomics selection keeps planted genes
    assert planted.median() > 0.6 and planted.mean() > 0.4, planted.describe()
    assert planted.mean() > noise.mean() + 0.3 and abs(noise.mean()) < 0.15, (planted.mean(), noise.mean())
    m = json.loads((real.run_dir / "metrics.json").read_text())
    assert {"Tumor Suppression", "Oncogenesis"} <= set(m["spearman_per_family"])
    assert m["optimistic"] is False and m["select"] == "final"


def test_rerun_removes_temporary_files_of_killed_runs_only(synthetic_study, trained_run, tmp_path):
    """Half-written files of a dead process are removed by the rerun (train run/fold/state folders, genomics
    fold folders, run logs); one of a live writer (this process) is left alone."""
    import subprocess

    from ghanet_pipeline.core.files import _owner

    feats, gdir = synthetic_study.features, synthetic_study.genomics
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = _owner().rsplit("-", 1)[0]
    root = tmp_path / "o"
    shutil.copytree(trained_run, root)  # a finished run (train/tiny, logs/) ...
    shutil.copytree(gdir, root / "genomics")  # ... and its genomics folder
    cfg = TrainConfig(**dict(TINY, folds=[0, 1]))
    run_dir = root / "train" / "tiny"
    places = [run_dir, run_dir / "fold_0", run_dir / "fold_0" / "state", root / "genomics" / "fold_0",
              root / "logs"]
    stale, live = [], []
    for d in places:
        d.mkdir(parents=True, exist_ok=True)
        stale.append(d / f".km.png.{host}-{dead.pid}.x1.tmp")
        live.append(d / f".km.png.{_owner()}.x2.tmp")
        for f in (stale[-1], live[-1]):
            f.write_bytes(b"half")
    again = train_cv(feats, root / "genomics", root, cfg, run_name="tiny")
    assert [r.status for r in again.folds] == ["skipped", "skipped"]
    preprocess_genomics(synthetic_study.genomics_config(folds=3, de_method="ttest"), root)
    assert [f for f in stale if f.exists()] == []
    assert all(f.exists() for f in live)


def test_bags_from_different_encoders_refused(tiny, tmp_path):
    feats, gdir, cohort = tiny
    mixed = _copy_features(feats, tmp_path / "mixed")
    sid = cohort.clinical.slide_id.iloc[0]
    write_bag(mixed / f"{sid}.h5", np.ones((5, 1024), np.float32), np.zeros((5, 2), np.int64),
              {**bag_attrs(sid), "encoder": "uni", "weights_sha256": "abc"})
    with pytest.raises(MismatchError, match="made differently.*encoder"):
        train_cv(mixed, gdir, tmp_path, TrainConfig(**TINY))


def test_missing_and_zero_patch_bags_are_warned_and_skipped_nan_and_empty_folds_fail(tiny, tmp_path):
    """One training with a validation case without bags and a training case with a 0-patch bag: both are
    warned about and skipped; then NaN features stop the fold naming the case, and a fold none of whose
    validation cases has a bag fails while the next fold trains."""
    feats, gdir, cohort = tiny
    bad = _copy_features(feats, tmp_path / "bad")
    fold0 = load_fold(gdir, 0)
    slides_of = cohort.clinical.groupby("case_id").slide_id.apply(list)
    gone, empty_case = fold0.val_ids[0], fold0.train_ids[0]
    for s in slides_of[gone]:
        (bad / f"{s}.h5").unlink()
    for s in slides_of[empty_case]:
        write_bag(bad / f"{s}.h5", np.zeros((0, 1024), np.float32), np.zeros((0, 2), np.int64), bag_attrs(s))
    res = train_cv(bad, gdir, tmp_path, TrainConfig(**TINY, folds=[0]), run_name="missing_and_zero")
    assert res.folds[0].status == "done"
    assert any("no bag" in w and gone in w for w in res.warnings)
    assert any("0 patches" in w for w in res.warnings)
    assert {gone, empty_case} <= set(res.metrics["skipped_cases"])
    assert gone not in set(pd.read_csv(res.run_dir / "predictions.csv").case_id)
    # NaN features in every other training case: the first step on one of them stops the fold, naming it
    nan = _copy_features(bad, tmp_path / "nan")
    nan_cases = [c for c in fold0.train_ids[1:] if c != empty_case]
    for c in nan_cases:
        for s in slides_of[c]:
            write_bag(nan / f"{s}.h5", np.full((10, 1024), np.nan, np.float32), np.zeros((10, 2), np.int64),
                      bag_attrs(s))
    res = train_cv(nan, gdir, tmp_path, TrainConfig(**TINY, folds=[0]), run_name="nan")
    msg = res.folds[0].message
    assert res.folds[0].status == "failed" and "fold 0, epoch 1" in msg and "NaN" in msg, msg
    assert any(repr(c) in msg for c in nan_cases), msg
    assert not (res.run_dir / "fold_0" / "model.json").exists()
    # now every validation case of fold 0 loses its bags: fold 0 fails, fold 1 still trains (1 epoch here)
    for c in fold0.val_ids:
        for s in slides_of[c]:
            (bad / f"{s}.h5").unlink(missing_ok=True)
    res = train_cv(bad, gdir, tmp_path, TrainConfig(**dict(TINY, epochs=1), folds=[0, 1]), run_name="empty_fold")
    status = {r.item: r for r in res.folds}
    assert status["fold 0"].status == "failed"
    msg = status["fold 0"].message
    assert "fold 0: none of the" in msg and "validation cases has a bag" in msg
    assert status["fold 1"].status == "done"
    assert set(res.metrics["c_index_per_fold"]) == {"1"}


def test_targets_and_bags_for_different_cases(tiny, tmp_path):
    feats, gdir, _ = tiny
    other = tmp_path / "other"
    other_cohort = make_cohort(n_cases=6, seed=9, case_prefix="OTHER")
    write_synthetic_bags(other_cohort, other, n_patches=10)
    with pytest.raises(MismatchError, match="different case sets"):
        train_cv(other, gdir, tmp_path, TrainConfig(**TINY))


def test_fold_without_comparable_pairs(tiny, tmp_path):
    feats, gdir, _ = tiny
    g2 = tmp_path / "genomics"
    shutil.copytree(gdir, g2)
    labels = pd.read_csv(g2 / "fold_1" / "labels.csv", dtype={"case_id": str})
    labels.loc[labels.split == "val", "censorship"] = 1
    labels.to_csv(g2 / "fold_1" / "labels.csv", index=False)
    res = train_cv(feats, g2, tmp_path, TrainConfig(**dict(TINY, epochs=1), folds=[0, 1]))
    assert res.metrics["c_index_per_fold"]["1"] is None
    assert any("fold 1" in w and "no comparable pairs" in w for w in res.metrics["warnings"])
    assert res.metrics["c_index_mean"] == pytest.approx(res.metrics["c_index_per_fold"]["0"])


def test_best_epoch_is_labelled_optimistic(tiny, tmp_path):
    feats, gdir, _ = tiny
    res = train_cv(feats, gdir, tmp_path, TrainConfig(**dict(TINY, epochs=3), folds=[0], select="best-epoch"))
    m = res.metrics
    assert m["optimistic"] is True and "optimistic" in m["note"]
    hist = json.loads((res.run_dir / "fold_0" / "history.json").read_text())
    cs = [h["val_c_index"] for h in hist["epochs"]]
    assert hist["selected_epoch"] == int(np.argmax(cs)) + 1
    assert m["c_index_per_fold"]["0"] == pytest.approx(max(cs))


def test_train_cli_end_to_end(tiny, tmp_path):
    feats, gdir, cohort = tiny
    runner = CliRunner()
    args = ["train", "--features", str(feats), "--genomics", str(gdir), "--out", str(tmp_path), "--epochs", "2",
            "--accum", "4", "--dim", "32", "--lr", "5e-4", "--no-progress", "--max-patches", "25"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "mean ± std" in res.output and "c-index" in res.output
    run = tmp_path / "train" / "ghanet"
    for f in ("config.json", "metrics.json", "predictions.csv", "km.png", "spearman.png", "learning_curves.png"):
        assert (run / f).is_file(), f
    pred = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    assert list(pred.columns) == ["fold", "case_id", "risk", "S_0", "S_1", "S_2", "S_3", "bin",
                                  "survival_months", "censorship"]
    assert sorted(pred.case_id) == sorted(cohort.cases.index)  # every case validated exactly once
    np.testing.assert_allclose(pred["risk"], -pred[["S_0", "S_1", "S_2", "S_3"]].sum(axis=1), rtol=1e-5)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["topk"] == pytest.approx(0.2) and cfg["max_patches"] == 25 and cfg["epochs"] == 2
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["c_index_per_fold"]) == {"0", "1", "2"}
    for k in range(3):
        fd = run / f"fold_{k}"
        model, meta = load_checkpoint(fd)
        fold = load_fold(gdir, k)
        assert meta["bin_edges_months"] == pytest.approx(fold.bin_edges_months)
        assert meta["selected"] == fold.selected and meta["families"] == fold.families
        assert meta["encoder"]["encoder"] == "synthetic_phenotype" and meta["encoder"]["input_size"] == 224
        assert meta["scaler"] == fold.scaler
        hist = json.loads((fd / "history.json").read_text())
        assert hist["complete"] and len(hist["epochs"]) == 2 and meta["epoch"] == 2
        # train_risk_median is the median training risk of the saved model
        from ghanet_pipeline.features.bags import read_bag

        slides = cohort.clinical.groupby("case_id").slide_id.apply(list)
        with torch.no_grad():
            risks = [float(model(torch.from_numpy(np.concatenate(
                [read_bag(feats / f"{s}.h5").features for s in slides[c]])))["risk"]) for c in fold.train_ids]
        assert meta["train_risk_median"] == pytest.approx(float(np.median(risks)), rel=1e-4, abs=1e-5)
    # evaluate on the written predictions reproduces the per-fold c-index
    res = runner.invoke(cli, ["evaluate", str(run / "predictions.csv"), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["c_index_per_fold"] == pytest.approx(m["c_index_per_fold"])
    # same run again: finished folds are skipped, nothing retrained; other options are refused
    mtime = (run / "fold_0" / "model.safetensors").stat().st_mtime_ns
    res = runner.invoke(cli, args)
    assert res.exit_code == 0 and res.output.count("skipped") >= 3, res.output
    assert (run / "fold_0" / "model.safetensors").stat().st_mtime_ns == mtime
    res = runner.invoke(cli, args[:-2] + ["--max-patches", "30"])
    assert res.exit_code == 1 and "options: 1 changed (max_patches" in res.output
    # ABMIL under the identical protocol, genomics used only for folds/labels
    res = runner.invoke(cli, args + ["--model", "abmil"])
    assert res.exit_code == 0, res.output
    abmil = tmp_path / "train" / "abmil"
    assert not (abmil / "spearman.png").exists()
    assert json.loads((abmil / "fold_0" / "model.json").read_text())["model"] == "abmil"
    abmil_pred = pd.read_csv(abmil / "predictions.csv", dtype={"case_id": str})
    assert (abmil_pred.sort_values(["fold", "case_id"]).case_id.tolist()
            == pred.sort_values(["fold", "case_id"]).case_id.tolist())


def test_case_to_bag_mapping(tmp_path):
    from ghanet_pipeline.training.data import map_cases_to_bags

    bags = {s: tmp_path / f"{s}.h5" for s in ("TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0001-01Z-00-DX2",
                                                "TCGA-AA-0002-01Z-00-DX1", "CASE9", "slideX")}
    cases = ["TCGA-AA-0001", "TCGA-AA-0002", "CASE9", "TCGA-AA-0003"]
    # genomics cases.csv slide ids (MCAT tables keep the .svs ending); a case named like its bag
    slides = {"TCGA-AA-0001": ["TCGA-AA-0001-01Z-00-DX1.svs", "TCGA-AA-0001-01Z-00-DX2.svs"],
              "TCGA-AA-0002": ["TCGA-AA-0002-01Z-00-DX1.svs"]}
    found, missing = map_cases_to_bags(cases, bags, slides)
    assert [p.stem for p in found["TCGA-AA-0001"]] == ["TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0001-01Z-00-DX2"]
    assert [p.stem for p in found["CASE9"]] == ["CASE9"] and missing == ["TCGA-AA-0003"]
    # TCGA barcodes: first 12 characters
    found, missing = map_cases_to_bags(cases, bags, {}, case_id_from="tcga")
    assert len(found["TCGA-AA-0001"]) == 2 and missing == ["TCGA-AA-0003"]
    # manifest slide_id -> case_id wins
    man = tmp_path / "m.csv"
    man.write_text("slide_id,path,case_id\nslideX,x.svs,CASE9\nCASE9,y.svs,OTHER\n")
    found, missing = map_cases_to_bags(cases, bags, slides, manifest=man)
    assert [p.stem for p in found["CASE9"]] == ["slideX"] and "TCGA-AA-0001" in missing


@pytest.mark.parametrize("opts, expected", [
    (["--dim", "10"], "--dim 10 must be a multiple of the 4 attention heads"),
    (["--weight-decay", "-1"], "--weight-decay must be a number >= 0"),
    (["--weight-decay", "nan"], "--weight-decay must be a number >= 0"),
    (["--alpha", "inf"], "--alpha must be a number >= 0"),
    (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"], "--device cuda"),
])
def test_bad_options_are_usage_errors_before_anything_is_written(tmp_path, opts, expected):
    (tmp_path / "genomics").mkdir()
    res = CliRunner().invoke(cli, ["train", "--features", str(tmp_path), "--genomics", str(tmp_path / "genomics"),
                                   "--out", str(tmp_path / "out"), "--no-progress", *opts])
    assert res.exit_code == 2 and expected in res.output, res.output
    assert not (tmp_path / "out" / "train").exists()


def test_genomics_folder_without_folds_says_so(tmp_path):
    with pytest.raises(InputError, match="holds no folds.*preprocess-genomics"):
        train_cv(tmp_path, tmp_path, tmp_path / "out", TrainConfig(**TINY))
