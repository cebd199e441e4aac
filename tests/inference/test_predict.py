"""ghanet predict: ensemble arithmetic, risk-group rule, checkpoint/encoder checks, end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ghanet_pipeline.core.errors import CheckpointError, ConfigError, MismatchError
from ghanet_pipeline.features.compatibility import check_encoder, encoder_differences
from ghanet_pipeline.inference import ensemble as ENS
from ghanet_pipeline.inference import loading as L
from ghanet_pipeline.inference import predict as P
from ghanet_pipeline.inference.config import PredictConfig
from ghanet_pipeline.testing import (
    TINY_DIM,
    TINY_EDGES,
    TINY_ENC,
    TINY_ENCODER,
    make_run,
    register_tiny_encoder,
    write_tiny_bags,
)

# --------------------------------------------------------------------------- pure arithmetic


def test_summarize_risks_mean_and_spread():
    rs = ENS.summarize_risks([-2.0, -1.0, -3.0])
    assert rs.mean == pytest.approx(-2.0)
    assert rs.std == pytest.approx(1.0)  # sample std (ddof=1)
    assert (rs.min, rs.max, rs.n) == (-3.0, -1.0, 3)
    one = ENS.summarize_risks([-1.5])
    assert one.std is None and one.mean == one.min == one.max == -1.5
    with pytest.raises(ValueError):
        ENS.summarize_risks([float("nan")])


def test_risk_group_compares_mean_risk_with_mean_training_median():
    # fold 0: far above its median, fold 1: a little below its own median -> majority is a tie,
    # mean margin (0.5 - 0.1) / 2 > 0 -> high
    d = ENS.risk_group([-1.0, -2.6], [-1.5, -2.5])
    assert d.threshold == pytest.approx(-2.0)
    assert d.margin == pytest.approx(0.2)
    assert d.group == "high" and d.folds_high == 1 and d.n_folds == 2
    # the same margins with opposite sign -> low
    assert ENS.risk_group([-2.0, -2.4], [-1.5, -2.5]).group == "low"
    # exactly at the threshold counts as low (training split: high = strictly above the median)
    assert ENS.risk_group([-2.0], [-2.0]).group == "low"
    # invariant to shifting one fold's whole risk scale together with its median
    a = ENS.risk_group([-1.0, -2.6], [-1.5, -2.5])
    b = ENS.risk_group([-1.0 + 7.0, -2.6], [-1.5 + 7.0, -2.5])
    assert a.group == b.group and a.margin == pytest.approx(b.margin)
    with pytest.raises(ValueError):
        ENS.risk_group([-1.0, -2.0], [-1.0])


def test_ensemble_survival_same_edges_is_plain_mean():
    S = np.array([[0.9, 0.7, 0.5, 0.2], [0.8, 0.6, 0.3, 0.1]])
    c = ENS.ensemble_survival(S, np.array([TINY_EDGES, TINY_EDGES]))
    np.testing.assert_allclose(c.S, [0.85, 0.65, 0.4, 0.15])
    np.testing.assert_allclose(c.S_std, np.std(S, axis=0, ddof=1))
    assert c.edges_months == TINY_EDGES and not c.edges_differ


def test_ensemble_survival_different_edges_interpolates_at_mean_edges():
    S = np.array([[0.8, 0.6, 0.4, 0.2], [0.8, 0.6, 0.4, 0.2]])
    E = np.array([[0, 10, 20, 30, 40], [0, 30, 40, 50, 60]], dtype=float)
    c = ENS.ensemble_survival(S, E)
    assert c.edges_differ
    np.testing.assert_allclose(c.edges_months, [0, 20, 30, 40, 50])
    # fold 0 at t=20,30,40,50: 0.6, 0.4, 0.2, 0.2 (flat after its last edge)
    # fold 1 at t=20: between (0, 1) and (30, 0.8) -> 1 - 0.2 * 20/30; t=30: 0.8; t=40: 0.6; t=50: 0.4
    f1 = [1 - 0.2 * 20 / 30, 0.8, 0.6, 0.4]
    np.testing.assert_allclose(c.S, (np.array([0.6, 0.4, 0.2, 0.2]) + f1) / 2)



def test_new_slides_are_segmented_with_the_training_settings():
    """Recorded tissue settings are reused; um/px and patch size always come from the encoder record."""
    from ghanet_pipeline.inference.loading import segment_params_for
    from ghanet_pipeline.wsi.segment import SegmentParams

    enc = {"target_mpp": 0.25, "patch_size": 224}
    p = segment_params_for({"sat_threshold": 8, "min_tissue": 0.8, "target_mpp": 0.5, "patch_size": 256,
                            "unknown_future_key": 1}, enc)
    assert (p.sat_threshold, p.min_tissue, p.target_mpp, p.patch_size) == (8, 0.8, 0.25, 224)
    d = segment_params_for({}, enc)  # old checkpoint / CLAM bags: defaults
    assert d.sat_threshold == SegmentParams().sat_threshold and d.min_tissue == SegmentParams().min_tissue

def test_encoder_differences_and_check():
    """One rule for every recorded setting: numbers within settings.SETTING_REL_TOL, the rest exact."""
    model = {"encoder": "resnet50_trunc", "weights_sha256": "abc", "input_size": 256, "target_mpp": 0.5,
             "patch_size": 256}
    assert encoder_differences(model, {**model, "target_mpp": 0.5 * (1 + 1e-9), "input_size": 256.0}) == []
    assert encoder_differences(model, {**model, "target_mpp": 0.5001}) == ["target_mpp: model 0.5, features 0.5001"]
    diffs = encoder_differences(model, {**model, "weights_sha256": "def", "input_size": 224})
    assert len(diffs) == 2 and any("weights_sha256" in d for d in diffs)
    missing = {k: v for k, v in model.items() if k != "patch_size"}
    assert encoder_differences(model, missing) == ["patch_size: model 256, features have none"]
    with pytest.raises(MismatchError, match="weights_sha256: model 'abc', features 'def'"):
        check_encoder(model, {**model, "weights_sha256": "def"}, "bag x.h5")


# --------------------------------------------------------------------------- ensemble on bags


def test_predict_from_bags_matches_manual_ensemble(tmp_path):
    import torch

    from ghanet_pipeline.models import load_checkpoint
    from ghanet_pipeline.wsi.inputs import SlideSpec

    run = make_run(tmp_path / "run", TINY_ENC, folds=(0, 1, 2))
    feats = write_tiny_bags(tmp_path / "bags", ["s1", "s2", "s3"])
    specs = [SlideSpec("s1", tmp_path / "s1.svs", "caseA"), SlideSpec("s2", tmp_path / "s2.svs", "caseA"),
             SlideSpec("s3", tmp_path / "s3.svs", "caseB")]
    cfg = PredictConfig(out=tmp_path / "out", features_dir=tmp_path / "bags", device="cpu")
    res = P.predict_cases(specs, run, cfg)
    assert [c.case_id for c in res.cases] == ["caseA", "caseB"]
    a = res.cases[0]
    assert a.status == "done" and a.n_patches == 40 and a.patches_per_slide == {"s1": 20, "s2": 20}
    # recompute by hand: each fold model on the pooled bag of caseA
    pooled = torch.as_tensor(np.concatenate([feats["s1"], feats["s2"]]))
    risks, surv, meds = [], [], []
    for k in range(3):
        m, meta = load_checkpoint(run / f"fold_{k}")
        with torch.no_grad():
            o = m(pooled)
        risks.append(float(o["risk"]))
        surv.append(o["S"].numpy().ravel())
        meds.append(meta["train_risk_median"])
    assert a.risk == pytest.approx(np.mean(risks), abs=1e-6)
    assert a.risk_std == pytest.approx(np.std(risks, ddof=1), abs=1e-6)
    assert (a.risk_min, a.risk_max) == (pytest.approx(min(risks), abs=1e-6), pytest.approx(max(risks), abs=1e-6))
    assert a.threshold == pytest.approx(np.mean(meds))
    assert a.risk_group == ("high" if np.mean(risks) > np.mean(meds) else "low")
    np.testing.assert_allclose(a.survival, np.mean(surv, axis=0), atol=1e-6)
    assert a.bin_edges_months == TINY_EDGES
    # outputs on disk
    rows = list(csv.DictReader(open(res.predictions_csv)))
    assert [r["case_id"] for r in rows] == ["caseA", "caseB"]
    assert float(rows[0]["risk"]) == pytest.approx(a.risk, rel=1e-5)
    assert rows[0]["slide_ids"] == "s1;s2" and rows[0]["risk_group"] == a.risk_group
    j = json.loads((tmp_path / "out/predict/caseA.json").read_text())
    assert j["risk_per_fold"] == {str(k): pytest.approx(r, abs=1e-6) for k, r in enumerate(risks)}
    assert j["encoder"]["encoder"] == TINY_ENCODER and j["encoder_check"] == "checked"
    assert list((tmp_path / "out/logs").glob("predict-*.json"))
    # --folds subset: one model, no spread
    one = P.predict_cases(specs[2:], run, PredictConfig(out=tmp_path / "out1", features_dir=tmp_path / "bags",
                                                          device="cpu", folds=[1]))
    assert one.cases[0].n_folds == 1 and one.cases[0].risk_std is None


def test_bag_from_other_encoder_is_refused(tmp_path):
    run = make_run(tmp_path / "run", TINY_ENC, folds=(0,))
    write_tiny_bags(tmp_path / "bags", ["good"])
    write_tiny_bags(tmp_path / "bags", ["bad"], encoder={**TINY_ENC, "weights_sha256": "f" * 64})
    from ghanet_pipeline.wsi.inputs import SlideSpec

    specs = [SlideSpec("good", tmp_path / "g.svs", "good"), SlideSpec("bad", tmp_path / "b.svs", "bad")]
    res = P.predict_cases(specs, run, PredictConfig(out=tmp_path / "out", features_dir=tmp_path / "bags",
                                                      device="cpu"))
    good, bad = res.cases
    assert good.status == "done"
    assert bad.status == "failed" and bad.risk is None
    assert "weights_sha256: model 'random:0', features 'ffff" in bad.message and "re-extract" in bad.message


def test_clam_bag_needs_assume_encoder(tmp_path):
    import h5py

    run = make_run(tmp_path / "run", TINY_ENC, folds=(0,))
    (tmp_path / "clam").mkdir()
    with h5py.File(tmp_path / "clam" / "TCGA-1.h5", "w") as h5:  # CLAM layout: no encoder attrs
        h5["features"] = np.random.default_rng(0).random((15, TINY_DIM)).astype(np.float32)
        h5["coords"] = np.stack([np.arange(15) * 256, np.zeros(15)], 1).astype(np.int64)
    cfg = PredictConfig(out=tmp_path / "out", features_dir=tmp_path / "clam", device="cpu")
    res = P.predict_cases([], run, cfg)  # no slides: every bag in the folder is a case
    assert res.cases[0].status == "failed" and "--assume-encoder" in res.cases[0].message
    cfg.assume_encoder, cfg.overwrite = True, True
    res = P.predict_cases([], run, cfg)
    c = res.cases[0]
    assert c.status == "done" and c.n_patches == 15 and c.encoder_check == "assumed (--assume-encoder)"


def test_run_dir_problems_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        L.load_ensemble(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no fold_<k>/ folders"):
        L.load_ensemble(tmp_path / "empty")
    run = make_run(tmp_path / "run", TINY_ENC, folds=(0, 1))
    with pytest.raises(ConfigError, match="fold\\(s\\) 5 not in"):
        L.load_ensemble(run, folds=[0, 5])
    (run / "fold_1" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        L.load_ensemble(run)
    assert L.load_ensemble(run, folds=[0]).folds == [0]
    # a checkpoint from an incompatible version
    meta_path = run / "fold_0" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "checkpoint_version": 99}))
    with pytest.raises(CheckpointError, match="checkpoint_version 99"):
        L.load_ensemble(run, folds=[0])
    # an older checkpoint without the training median
    del meta["train_risk_median"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="lacks train_risk_median"):
        L.load_ensemble(run, folds=[0])


def test_folds_trained_on_different_encoders_are_refused(tmp_path):
    make_run(tmp_path / "run", TINY_ENC, folds=(0,))
    make_run(tmp_path / "run", {**TINY_ENC, "input_size": 64}, folds=(1,))
    with pytest.raises(MismatchError, match="input_size"):
        L.load_ensemble(tmp_path / "run")


def test_mismatched_encoder_weights_stop_before_any_slide(tmp_path):
    from ghanet_pipeline.wsi.inputs import SlideSpec

    register_tiny_encoder()
    run = make_run(tmp_path / "run", {**TINY_ENC, "weights_sha256": "random:0"}, folds=(0,))
    spec = SlideSpec("x", tmp_path / "x.svs", "x")
    with pytest.raises(MismatchError, match="weights_sha256: model 'random:0', features 'random:3'"):
        P.predict_cases([spec], run, PredictConfig(out=tmp_path / "out", weights="random:3", device="cpu"))
    assert not (tmp_path / "out" / "predict").exists()


def test_missing_encoder_weights_name_the_ones_the_model_was_trained_with(tmp_path, monkeypatch):
    """No --weights and none in the hub cache: the error names the model's encoder weights, before any slide."""
    from ghanet_pipeline.core.errors import ConfigError
    from ghanet_pipeline.wsi.inputs import SlideSpec

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    sha = "c634e1f428f21f8f" + "0" * 48
    run = make_run(tmp_path / "run", {**TINY_ENC, "encoder": "resnet50_trunc", "weights_sha256": sha}, folds=(0,),
                   in_dim=1024)
    spec = SlideSpec("x", tmp_path / "x.svs", "x")
    with pytest.raises(ConfigError) as err:
        P.predict_cases([spec], run, PredictConfig(out=tmp_path / "out", device="cpu"))
    msg = str(err.value)
    assert "trained on features of resnet50_trunc" in msg and "sha256 c634e1f428f21f8f" in msg
    assert "--weights FILE" in msg and "no weights for encoder 'resnet50_trunc'" in msg
    assert not (tmp_path / "out" / "predict").exists()


def test_missing_weights_of_a_random_weights_model_say_which_seed(tmp_path, monkeypatch):
    """A model trained on seeded random weights: the error asks for --weights random:<seed>, not a file."""
    from ghanet_pipeline.core.errors import ConfigError
    from ghanet_pipeline.wsi.inputs import SlideSpec

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    run = make_run(tmp_path / "run", {**TINY_ENC, "encoder": "resnet50_trunc", "weights_sha256": "random:7"}, folds=(0,),
                   in_dim=1024)
    spec = SlideSpec("x", tmp_path / "x.svs", "x")
    with pytest.raises(ConfigError) as err:
        P.predict_cases([spec], run, PredictConfig(out=tmp_path / "out", device="cpu"))
    msg = str(err.value)
    assert "pass --weights random:7 " in msg and "--weights FILE" not in msg
    assert not (tmp_path / "out" / "predict").exists()


def test_predictions_csv_of_another_model_is_not_overwritten(tmp_path):
    from ghanet_pipeline.wsi.inputs import SlideSpec

    write_tiny_bags(tmp_path / "bags", ["s1"])
    spec = [SlideSpec("s1", tmp_path / "s1.svs", "s1")]
    cfg = PredictConfig(out=tmp_path / "out", features_dir=tmp_path / "bags", device="cpu")
    P.predict_cases(spec, make_run(tmp_path / "runA", TINY_ENC, folds=(0,)), cfg)
    with pytest.raises(ConfigError, match="another model"):
        P.predict_cases(spec, make_run(tmp_path / "runB", TINY_ENC, folds=(0,)), cfg)
    cfg.overwrite = True
    P.predict_cases(spec, tmp_path / "runB", cfg)
    rows = list(csv.DictReader(open(tmp_path / "out/predict/predictions.csv")))
    assert len(rows) == 1 and "runB" in rows[0]["model"]


# --------------------------------------------------------------------------- slides end to end


def _invoke(args: list[str]):
    from click.testing import CliRunner

    from ghanet_pipeline.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_slides_end_to_end_with_bad_inputs(tmp_path):
    """Synthetic slides, tiny encoder + models: a pooled 2-slide case, a no-tissue slide, an unreadable file,
    and a manifest case none of whose slides can be read."""
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    register_tiny_encoder()
    d = tmp_path / "slides"
    d.mkdir()
    write_synthetic_slide(d / "a1.tif", 2048, 1536, mpp=0.5, seed=1)
    write_synthetic_slide(d / "a2.tif", 1536, 1536, mpp=0.5, seed=2, phenotype=1.0)
    write_synthetic_slide(d / "tiny.tif", 200, 180, mpp=0.5, seed=3)  # smaller than one patch: no tissue
    (d / "broken.svs").write_bytes(b"this is not a slide")
    (tmp_path / "m.csv").write_text("slide_id,path,case_id\n"
                                    "a1,slides/a1.tif,caseA\na2,slides/a2.tif,caseA\n"
                                    "tiny,slides/tiny.tif,caseB\n"
                                    "broken,slides/broken.svs,caseC\n"
                                    "gone1,slides/missing.svs,caseD\ngone2,slides/broken.svs,caseD\n")
    run = make_run(tmp_path / "run", TINY_ENC, folds=(0, 1))
    out = tmp_path / "out"
    r = _invoke(["predict", "--manifest", str(tmp_path / "m.csv"), "--model", str(run), "--out", str(out),
                 "--weights", "random", "--device", "cpu", "--heatmaps", "--no-progress"])
    assert r.exit_code == 1, r.output  # caseC/caseD failed, the others finished
    rows = {row["case_id"]: row for row in csv.DictReader(open(out / "predict/predictions.csv"))}
    assert list(rows) == ["caseA", "caseB", "caseC", "caseD"]
    a = rows["caseA"]
    assert a["status"] == "done" and a["slide_ids"] == "a1;a2" and a["risk_group"] in ("high", "low")
    ja = json.loads((out / "predict/caseA.json").read_text())
    n1, n2 = ja["patches_per_slide"]["a1"], ja["patches_per_slide"]["a2"]
    assert n1 > 0 and n2 > 0 and int(a["patches"]) == n1 + n2
    # the pooled bag is exactly the two slides' bags (made by the features stage, same settings)
    from ghanet_pipeline.features.bags import read_bag

    bag_dir = next((out / "features").iterdir())
    assert read_bag(bag_dir / "a1.h5").attrs["input_size"] == 32
    assert float(a["seconds_extract"]) > 0 and float(a["seconds_segment"]) > 0
    S = [float(a[f"S_bin{j}"]) for j in range(1, 5)]
    assert all(1 >= x >= y >= 0 for x, y in zip(S, S[1:], strict=False))
    assert a["bin_edges_months"] == "0;10;20;40;80"
    b = rows["caseB"]
    assert b["status"] == "no tissue" and b["risk"] == "" and b["risk_group"] == ""
    assert "smaller than one" in b["message"]
    c = rows["caseC"]
    assert c["status"] == "failed" and "broken" in c["message"] and "not a slide" in c["message"]
    dd = rows["caseD"]
    assert dd["status"] == "failed" and "none of its 2 slide(s) could be read" in dd["message"]
    assert "file not found" in dd["message"]
    # heatmaps: morphology + one per family for each slide, top tiles, montage
    hm = out / "predict/heatmaps/caseA"
    for sid in ("a1", "a2"):
        assert (hm / f"{sid}_morphology.png").is_file()
        assert (hm / f"{sid}_assoc_Tumor_Supp.png").is_file() and (hm / f"{sid}_assoc_Oncogenes.png").is_file()
    assert len(list((hm / "top").glob("Oncogenes_*.png"))) == min(4, -(-(n1 + n2) // 4))
    assert (hm / "top_patches.png").is_file()
    assert "caseA" in r.output and "failed" in r.output
    # a rerun reuses coords and bags (no extraction) and gives the same risk
    r2 = _invoke(["predict", "--manifest", str(tmp_path / "m.csv"), "--model", str(run), "--out", str(out),
                  "--weights", "random", "--device", "cpu", "--no-progress"])
    rows2 = {row["case_id"]: row for row in csv.DictReader(open(out / "predict/predictions.csv"))}
    assert r2.exit_code == 1 and rows2["caseA"]["risk"] == a["risk"]


def test_cli_usage_errors(tmp_path):
    run = make_run(tmp_path / "run", TINY_ENC, folds=(0,))
    r = _invoke(["predict", "x.svs", "--model", str(run), "--folds", "a,b"])
    assert r.exit_code == 2 and "--folds" in r.output
    r = _invoke(["predict", "x.svs", "--model", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "no such directory" in r.output
    r = _invoke(["predict", "x.svs", "--model", str(run / "fold_0" / "model.json")])
    assert r.exit_code == 1 and "is a file, not a folder" in r.output and "fold_<k>/ folder" in r.output


def test_real_slide_score_group_and_heatmaps(tmp_path, real_slide):
    """CMU-1-Small-Region with the real truncated ResNet50 architecture (random weights, 64 px input)."""
    enc = {"encoder": "resnet50_trunc", "weights_sha256": "random:0", "input_size": 64, "target_mpp": 0.5,
           "patch_size": 256}
    run = make_run(tmp_path / "run", enc, folds=(0, 1), in_dim=1024)
    out = tmp_path / "out"
    r = _invoke(["predict", str(real_slide), "--model", str(run), "--out", str(out), "--weights", "random",
                 "--device", "cpu", "--heatmaps", "--no-progress"])
    assert r.exit_code == 0, r.output
    row = next(csv.DictReader(open(out / "predict/predictions.csv")))
    assert row["case_id"] == "CMU-1-Small-Region" and row["status"] == "done"
    assert -4.0 <= float(row["risk"]) <= 0.0 and row["risk_group"] in ("high", "low")
    assert int(row["patches"]) > 10
    hm = out / "predict/heatmaps/CMU-1-Small-Region"
    assert (hm / "CMU-1-Small-Region_morphology.png").stat().st_size > 10_000
    assert len(list(hm.glob("CMU-1-Small-Region_assoc_*.png"))) == 2
    assert len(list((hm / "top").glob("*.png"))) == 8


def test_abmil_ensemble_has_attention_but_no_association(tmp_path):
    run = make_run(tmp_path / "run", TINY_ENC, folds=(0, 1), model="abmil")
    ens = L.load_ensemble(run)
    feats = np.random.default_rng(1).random((30, TINY_DIM)).astype(np.float32)
    o = ens.forward(feats)
    assert o.assoc_masked is None and o.w_mor.shape == (30,)
    assert o.w_mor.sum() == pytest.approx(1.0, abs=1e-5) and o.risks.shape == (2,)


def test_ensemble_maps_are_fold_means_of_the_models_own_weights(tmp_path):
    import torch

    from ghanet_pipeline.models import genomic_weights, load_checkpoint

    run = make_run(tmp_path / "run", TINY_ENC, folds=(0, 1))
    feats = np.random.default_rng(2).random((17, TINY_DIM)).astype(np.float32)
    o = L.load_ensemble(run).forward(feats)
    masks, wm = [], []
    for k in (0, 1):
        m, _ = load_checkpoint(run / f"fold_{k}")
        with torch.no_grad():
            out = m(torch.as_tensor(feats))
        masks.append(genomic_weights(out["assoc"], 0.25).numpy())
        wm.append(out["w_mor"].numpy())
    np.testing.assert_allclose(o.assoc_masked, np.mean(masks, axis=0), atol=1e-6)
    np.testing.assert_allclose(o.w_mor, np.mean(wm, axis=0), atol=1e-6)
    np.testing.assert_allclose(o.assoc_masked.sum(axis=1), 1.0, atol=1e-5)
    assert ((o.assoc_masked > 0).sum(axis=1) <= 2 * 5).all()  # ceil(0.25 * 17) = 5 per model
