"""Reruns of `ghanet train` (training/fingerprint.py, provenance_check.py): other inputs are refused naming
what changed, finished folds are kept, concurrent fold jobs merge into one run, --overwrite waits for none."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.core.errors import BusyError, MismatchError
from ghanet_pipeline.features.bags import read_bag, write_bag
from ghanet_pipeline.testing import TINY_TRAIN, package_env, snapshot
from ghanet_pipeline.training.config import TrainConfig
from ghanet_pipeline.training.cv import train_cv

#: the options of the session's ``trained_run`` (run ``tiny``, folds 0 and 1), here for fold 0 only
TINY = dict(TINY_TRAIN, folds=[0])
RUN = "tiny"


@pytest.fixture
def data(synthetic_study):
    """(bags folder, genomics folder, cohort) of the session's synthetic study (read-only)."""
    return synthetic_study.features, synthetic_study.genomics, synthetic_study.cohort


def _copy(trained_run: Path, dst: Path) -> Path:
    shutil.copytree(trained_run, dst)
    return dst


def test_rerun_with_other_inputs_is_refused_and_changes_nothing(data, synthetic_study, trained_run, tmp_path):
    feats, gdir, cohort = data
    out = _copy(trained_run, tmp_path / "out")
    run = out / "train" / RUN
    cfg = json.loads((run / "config.json").read_text())
    assert set(cfg["fingerprint"]) == {"features", "encoder", "cases", "genomics", "options"}
    meta = json.loads((run / "fold_0" / "model.json").read_text())
    assert meta["fingerprint_digest"] == cfg["fingerprint_digest"] and meta["config_hash"] == cfg["config_hash"]
    before = snapshot(run)
    time.sleep(0.01)

    # other bags: one bag's features changed
    other = tmp_path / "feats2"
    shutil.copytree(feats, other)
    sid = sorted(p.stem for p in feats.glob("*.h5"))[0]
    bag = read_bag(other / f"{sid}.h5")
    write_bag(other / f"{sid}.h5", bag.features + 0.5, bag.coords, bag.attrs)
    with pytest.raises(MismatchError) as exc:
        train_cv(other, gdir, out, TrainConfig(**TINY), run_name=RUN)
    assert f"features: 1 changed ({sid}:" in str(exc.value) and "--run-name NEW" in str(exc.value)
    assert "- genomics:" not in str(exc.value) and "- options:" not in str(exc.value)
    assert snapshot(run) == before

    # another genomics folder (other folds/targets): named as genomics, through the CLI (exit code)
    from ghanet_pipeline.genomics import preprocess_genomics

    preprocess_genomics(synthetic_study.genomics_config(folds=2, de_method="ttest"), tmp_path / "g2")
    gdir2 = tmp_path / "g2" / "genomics"
    args = ["train", "--features", str(feats), "--out", str(out), "--run-name", RUN, "--folds", "0",
            "--epochs", "2", "--accum", "4", "--dim", "16", "--lr", "5e-4", "--no-progress"]
    res = CliRunner().invoke(cli, args + ["--genomics", str(gdir2)])
    assert res.exit_code == 1, res.output
    assert "- genomics:" in res.output and "fold_0/" in res.output and "- features:" not in res.output
    assert snapshot(run) == before

    # another manifest (two slides swap cases): named as the case mapping
    clin = cohort.clinical
    slides = clin.slide_id.tolist()
    cases = clin.case_id.tolist()
    cases[0], cases[-1] = cases[-1], cases[0]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"slide_id": slides, "case_id": cases, "path": [f"{s}.svs" for s in slides]}).to_csv(
        manifest, index=False)
    res = CliRunner().invoke(cli, args + ["--genomics", str(gdir), "--manifest", str(manifest)])
    assert res.exit_code == 1 and "cases:" in res.output, res.output
    assert snapshot(run) == before

    # other options (still named) and --resume on the finished run with other bags
    res = CliRunner().invoke(cli, args[:-1] + ["--genomics", str(gdir), "--max-patches", "5", "--no-progress"])
    assert res.exit_code == 1 and "options: 1 changed (max_patches: null -> 5)" in res.output, res.output
    with pytest.raises(MismatchError, match="features"):
        train_cv(other, gdir, out, TrainConfig(**TINY), run_name=RUN, resume=True)
    assert snapshot(run) == before

    # same inputs: accepted, nothing retrained; --overwrite replaces the run
    again = train_cv(feats, gdir, out, TrainConfig(**TINY), run_name=RUN)
    assert [r.status for r in again.folds] == ["skipped"]
    assert (run / "fold_0" / "model.safetensors").stat().st_mtime_ns == before["fold_0/model.safetensors"][1]
    new = train_cv(other, gdir, out, TrainConfig(**TINY), run_name=RUN, overwrite=True)
    assert [r.status for r in new.folds] == ["done"]
    assert json.loads((run / "config.json").read_text())["fingerprint_digest"] != cfg["fingerprint_digest"]


def test_old_run_without_fingerprint_is_refused(data, trained_run, tmp_path):
    feats, gdir, _ = data
    out = _copy(trained_run, tmp_path / "out")
    cfg_path = out / "train" / RUN / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["fingerprint"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(MismatchError, match="records no input fingerprint"):
        train_cv(feats, gdir, out, TrainConfig(**TINY), run_name=RUN)


# ----------------------------------------------------------------------------------------- concurrent jobs, locks

def _train_cmd(feats: Path, gdir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ghanet_pipeline", "train", "--features", str(feats), "--genomics", str(gdir),
            "--out", str(out), "--run-name", "par", "--epochs", "2", "--accum", "4", "--dim", "16",
            "--threads", "1", "--no-progress", *extra]


@pytest.mark.slow
def test_parallel_fold_jobs_merge_into_one_complete_run(data, tmp_path):
    feats, gdir, _ = data
    procs = [subprocess.Popen(_train_cmd(feats, gdir, tmp_path, "--folds", str(k)), env=package_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    run = tmp_path / "train" / "par"
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["c_index_per_fold"]) == {"0", "1"}
    pred = pd.read_csv(run / "predictions.csv")
    assert sorted(set(pred.fold)) == [0, 1] and not pred.duplicated(["fold", "case_id"]).any()
    for k in (0, 1):
        assert len(pred[pred.fold == k]) == len(pd.read_csv(run / f"fold_{k}" / "predictions.csv"))
    assert json.loads((run / "config.json").read_text())["folds"] == [0, 1]
    assert not list(run.rglob("*.tmp")) and not list((tmp_path / "train" / ".locks" / "par").glob("job-*"))


def test_overwrite_refused_while_another_job_holds_the_run(data, trained_run, tmp_path):
    feats, gdir, _ = data
    out = _copy(trained_run, tmp_path / "out")
    before = snapshot(out / "train" / RUN)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from ghanet_pipeline.core.locks import OutputLocks
        locks = OutputLocks({str(out / 'train')!r}, {RUN!r})
        with locks.exclusive():
            locks.register_job()
        print("held", flush=True)
        time.sleep(120)
        """)], env=package_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError, match="in use by 1 other train process"):
            train_cv(feats, gdir, out, TrainConfig(**TINY), run_name=RUN, overwrite=True)
        assert snapshot(out / "train" / RUN) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: the OS released its lock, its lock file is stale and --overwrite proceeds
    res = train_cv(feats, gdir, out, TrainConfig(**TINY), run_name=RUN, overwrite=True)
    assert [r.status for r in res.folds] == ["done"]
    assert not list((out / "train" / ".locks" / RUN).glob("job-*"))


def test_reports_merged_from_finished_folds_on_disk_equal_the_ones_from_memory(data, trained_run, tmp_path):
    """A rerun after a kill between a fold's end and the reports (or a second fold job) merges the
    reports from the fold files on disk: byte-identical to an uninterrupted run's."""
    feats, gdir, _ = data
    a = trained_run / "train" / RUN  # its reports were written from the folds in memory
    b = _copy(trained_run, tmp_path / "b") / "train" / RUN
    for f in ("predictions.csv", "metrics.json"):
        (b / f).unlink()
    again = train_cv(feats, gdir, tmp_path / "b", TrainConfig(**dict(TINY, folds=[0, 1])), run_name=RUN)
    assert [r.status for r in again.folds] == ["skipped", "skipped"]
    for f in ("predictions.csv", "metrics.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
