"""predict: per-case results written as each case finishes, reused on rerun, --shard, concurrent
processes into one --out, and predict without --model."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.inference import predict as P
from ghanet_pipeline.inference.config import PredictConfig
from ghanet_pipeline.testing import TINY_ENC, make_run, package_env, write_tiny_bags
from ghanet_pipeline.wsi.inputs import SlideSpec


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "predict" / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _spawn(*args: str) -> subprocess.Popen:
    env = package_env(OMP_NUM_THREADS="1", GHANET_MODEL="")
    return subprocess.Popen([sys.executable, "-m", "ghanet_pipeline", "predict", *args, "--device", "cpu",
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_rerun_reuses_cases_of_the_same_model_and_inputs(tmp_path):
    run = make_run(tmp_path / "run", TINY_ENC, folds=(0, 1))
    write_tiny_bags(tmp_path / "bags", ["a", "b", "c"])
    specs = [SlideSpec(s, tmp_path / f"{s}.svs", s) for s in ("a", "b", "c")]
    cfg = PredictConfig(out=tmp_path / "out", features_dir=tmp_path / "bags", device="cpu")
    first = P.predict_cases(specs, run, cfg)
    assert [r.status for r in first.results] == ["done"] * 3
    before = {p.name: p.read_bytes() for p in (tmp_path / "out/predict").glob("*.json")}
    again = P.predict_cases(specs, run, cfg)
    assert [r.status for r in again.results] == ["skipped"] * 3
    assert [c.risk for c in again.cases] == [c.risk for c in first.cases]
    assert {p.name: p.read_bytes() for p in (tmp_path / "out/predict").glob("*.json")} == before
    # a rewritten bag (same size, other values) is predicted again; the others are reused
    write_tiny_bags(tmp_path / "bags", ["b"], seed=7)
    third = P.predict_cases(specs, run, cfg)
    assert [r.status for r in third.results] == ["skipped", "done", "skipped"]
    assert third.cases[1].risk != first.cases[1].risk
    assert float(_rows(tmp_path / "out")[1]["risk"]) == pytest.approx(third.cases[1].risk, rel=1e-5)
    # the same run folder retrained (fold 0 gets other weights): nothing is reused
    import torch

    from ghanet_pipeline.models import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(run / "fold_0")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    save_checkpoint(run / "fold_0", model, meta)
    fourth = P.predict_cases(specs, run, cfg)
    assert [r.status for r in fourth.results] == ["done"] * 3
    # --overwrite redoes every case
    cfg.overwrite = True
    assert [r.status for r in P.predict_cases(specs, run, cfg).results] == ["done"] * 3


def test_a_killed_rebuild_of_the_table_leaves_no_temporary_file(tmp_path):
    """A predict killed while writing predictions.csv leaves its temporary file; the next rebuild removes it
    (found by the kill tests: tests/e2e/test_chaos.py), a live writer's is spared."""
    from ghanet_pipeline.core.files import _owner
    from ghanet_pipeline.inference.records import rebuild_predictions_csv

    run = make_run(tmp_path / "run", TINY_ENC, folds=(0, 1))
    write_tiny_bags(tmp_path / "bags", ["a", "b"])
    specs = [SlideSpec(s, tmp_path / f"{s}.svs", s) for s in ("a", "b")]
    P.predict_cases(specs, run, PredictConfig(out=tmp_path / "out", features_dir=tmp_path / "bags", device="cpu"))
    out_dir = tmp_path / "out" / "predict"
    host = _owner().rsplit("-", 1)[0]
    dead = out_dir / f".predictions.csv.{host}-{2**22 + 12345}.x1.tmp"  # no such process
    live = out_dir / f".predictions.csv.{_owner()}.x2.tmp"  # this process: a writer still running
    for p in (dead, live):
        p.write_text("case_id\nhalf")
    model = json.loads((out_dir / "a.json").read_text())["model"]
    assert [p.case_id for p in rebuild_predictions_csv(out_dir, model)] == ["a", "b"]
    assert not dead.exists() and live.exists() and [r["case_id"] for r in _rows(tmp_path / "out")] == ["a", "b"]


def test_shards_write_one_table(tmp_path):
    run = make_run(tmp_path / "run", TINY_ENC, folds=(0,))
    ids = [f"s{i}" for i in range(5)]
    write_tiny_bags(tmp_path / "bags", ids)
    specs = [SlideSpec(s, tmp_path / f"{s}.svs", s) for s in ids]
    for i in range(3):
        cfg = PredictConfig(out=tmp_path / "out", features_dir=tmp_path / "bags", device="cpu", shard=(i, 3))
        res = P.predict_cases(specs, run, cfg)
        assert [c.case_id for c in res.cases] == ids[i::3]
    assert [r["case_id"] for r in _rows(tmp_path / "out")] == ids
    r = CliRunner().invoke(cli, ["predict", "--features", str(tmp_path / "bags"), "--model", str(run), "--out",
                                 str(tmp_path / "o2"), "--shard", "3/2", "--device", "cpu"])
    assert r.exit_code == 2 and "--shard 3/2" in r.output


@pytest.mark.slow  # starts Python processes (each imports torch)
def test_two_processes_into_one_out_lose_nothing(tmp_path):
    run = make_run(tmp_path / "run", TINY_ENC, folds=(0, 1))
    ids = [f"c{i:02d}" for i in range(24)]
    write_tiny_bags(tmp_path / "bags", ids, n=400)
    out = tmp_path / "out"
    # different slides per process (as two users would) plus one shared slide both predict
    half_a = [str(tmp_path / "bags" / f"{s}.h5") for s in ids[:13]]
    half_b = [str(tmp_path / "bags" / f"{s}.h5") for s in ids[12:]]
    procs = [_spawn(*half, "--features", str(tmp_path / "bags"), "--model", str(run), "--out", str(out))
             for half in (half_a, half_b)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows = _rows(out)
    assert sorted(r["case_id"] for r in rows) == ids  # every case present once
    assert all(r["status"] == "done" and r["risk"] for r in rows)
    assert len(list((out / "logs").glob("predict-*.json"))) == 2
    assert not list((out / "predict").glob(".*.tmp"))


@pytest.mark.slow  # starts Python processes (each imports torch)
def test_killed_predict_keeps_finished_cases(tmp_path):
    run = make_run(tmp_path / "run", TINY_ENC, folds=(0, 1))
    ids = [f"k{i:03d}" for i in range(80)]
    write_tiny_bags(tmp_path / "bags", ids, n=50)
    out = tmp_path / "out"
    proc = _spawn("--features", str(tmp_path / "bags"), "--model", str(run), "--out", str(out))
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "predict").glob("k*.json"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    finished = {p.stem: p.read_bytes() for p in (out / "predict").glob("k*.json")}
    assert 3 <= len(finished) < len(ids), "the kill came too late to test anything"
    for body in finished.values():
        assert json.loads(body)["status"] == "done"  # every file there is complete (atomic writes)
    r = CliRunner().invoke(cli, ["predict", "--features", str(tmp_path / "bags"), "--model", str(run),
                                 "--out", str(out), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    log = json.loads(max((out / "logs").glob("predict-*.json"), key=lambda p: p.stat().st_mtime).read_text())
    assert set(finished) <= set(log["config"]["reused"])
    assert {p.stem: p.read_bytes() for p in (out / "predict").glob("k*.json") if p.stem in finished} == finished
    assert sorted(r["case_id"] for r in _rows(out)) == ids


def test_predict_without_model_uses_the_only_run_or_lists_them(tmp_path, monkeypatch):
    monkeypatch.delenv("GHANET_MODEL", raising=False)
    out = tmp_path / "out"
    write_tiny_bags(tmp_path / "bags", ["a"])
    args = ["predict", "--features", str(tmp_path / "bags"), "--out", str(out), "--device", "cpu", "--no-progress"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "no training run under" in r.output
    make_run(out / "train" / "ghanet", TINY_ENC, folds=(0,))
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert f"using model {out / 'train' / 'ghanet'}" in r.output
    assert "train/ghanet#folds=0" in _rows(out)[0]["model"]
    make_run(out / "train" / "abmil", TINY_ENC, folds=(0,), model="abmil")
    (out / "train" / "notes").mkdir()  # not a run: no fold_<k>/model.json
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert "2 training runs under" in text and "GHANET_MODEL" in text
    assert f"--model {out / 'train' / 'abmil'}" in text and f"--model {out / 'train' / 'ghanet'}" in text
    monkeypatch.setenv("GHANET_MODEL", str(out / "train" / "abmil"))
    r = CliRunner().invoke(cli, args + ["--overwrite"])
    assert r.exit_code == 0, r.output
    assert "train/abmil#folds=0" in _rows(out)[0]["model"]
