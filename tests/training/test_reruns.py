"""Provenance fingerprints, crash-safe resume state and concurrent fold jobs of `ghanet train`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.core.errors import BusyError, CheckpointError, MismatchError
from ghanet_pipeline.core.files import atomic_path, remove_stale_temps
from ghanet_pipeline.core.fingerprints import check_same, component_from_items, component_from_mapping
from ghanet_pipeline.features.bags import read_bag, read_bag_attrs, write_bag
from ghanet_pipeline.features.fingerprints import bag_content_sha, features_sha256
from ghanet_pipeline.training.config import TrainConfig
from ghanet_pipeline.training.cv import train_cv
from ghanet_pipeline.training.state import STATE_NAME, read_state_metadata

TINY = dict(epochs=2, accum=4, dim=16, lr=5e-4, folds=[0])
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_training import _make_data

    root = tmp_path_factory.mktemp("prov")
    feats, gdir, cohort = _make_data(root, n_cases=24, seed=3, n_patches=(10, 20))
    return feats, gdir, cohort


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under ``folder``: (size, mtime_ns, sha256) / "dir"."""
    out: dict[str, tuple] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_dir():
            out[rel] = ("dir", p.stat().st_mtime_ns)
        else:
            out[rel] = (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


class Stop(KeyboardInterrupt):
    pass


def _stop_at(epoch: int):
    def progress(kind, **info):
        if kind == "epoch" and info["epoch"] == epoch:
            raise Stop()
    return progress


# ----------------------------------------------------------------------------------------- mechanism

def test_differences_are_named_per_component_and_item():
    old = {"features": component_from_items({"s1": "aaa", "s2": "bbb", "s3": "ccc"}, "3 bags"),
           "options": component_from_mapping({"lr": 2e-4, "epochs": 20})}
    new = {"features": component_from_items({"s1": "aaa", "s2": "zzz", "s4": "ddd"}, "3 bags"),
           "options": component_from_mapping({"lr": 1e-3, "epochs": 20})}
    check_same(old, dict(old), "x", "fix")  # identical: no error
    with pytest.raises(MismatchError) as exc:
        check_same(old, new, "run folder r", "Use --run-name NEW or --overwrite.")
    msg = str(exc.value)
    assert "features: 1 changed (s2: bbb -> zzz), 1 no longer present (s3), 1 new (s4)" in msg
    assert "options: 1 changed (lr: 0.0002 -> 0.001)" in msg and "epochs" not in msg
    assert msg.endswith("Nothing was changed. Use --run-name NEW or --overwrite.")
    check_same(old, new, "x", "fix", ignore=("features", "options"))


def test_bag_hash_recorded_at_extract_and_equal_to_hashing_the_data(tmp_path, data):
    feats, _, _ = data
    bag = sorted(feats.glob("*.h5"))[0]
    attrs = read_bag_attrs(bag)
    features = read_bag(bag).features
    assert attrs["features_sha256"] == features_sha256(features.astype(np.float32))
    # the same features without the recorded attr (older ghanet / foreign bag) hash to the same value
    import h5py

    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as h5:
        h5["features"] = features
        h5["coords"] = np.zeros((len(features), 2), np.int64)
    assert bag_content_sha(plain) == bag_content_sha(bag) == attrs["features_sha256"][:16]
    changed = features.copy()
    changed[0, 0] += 1e-3
    with h5py.File(plain, "w") as h5:
        h5["features"] = changed
    assert bag_content_sha(plain) != bag_content_sha(bag)  # new mtime/size: not served from the cache


# ----------------------------------------------------------------------------------------- train reruns

def test_rerun_with_other_inputs_is_refused_and_changes_nothing(data, tmp_path):
    feats, gdir, cohort = data
    train_cv(feats, gdir, tmp_path, TrainConfig(**TINY), run_name="r")
    run = tmp_path / "train" / "r"
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
        train_cv(other, gdir, tmp_path, TrainConfig(**TINY), run_name="r")
    assert f"features: 1 changed ({sid}:" in str(exc.value) and "--run-name NEW" in str(exc.value)
    assert "- genomics:" not in str(exc.value) and "- options:" not in str(exc.value)
    assert snapshot(run) == before

    # another genomics folder (other folds/targets): named as genomics, through the CLI (exit code)
    from test_training import _make_data

    _, gdir2, _ = _make_data(tmp_path / "g2", n_cases=24, seed=3, n_patches=(10, 20), folds=2)
    args = ["train", "--features", str(feats), "--out", str(tmp_path), "--run-name", "r", "--folds", "0",
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
    assert res.exit_code != 0 and "cases:" in res.output, res.output
    assert snapshot(run) == before

    # other options (still named) and --resume on the finished run with other bags
    res = CliRunner().invoke(cli, args[:-1] + ["--genomics", str(gdir), "--max-patches", "5", "--no-progress"])
    assert res.exit_code == 1 and "options: 1 changed (max_patches: null -> 5)" in res.output, res.output
    with pytest.raises(MismatchError, match="features"):
        train_cv(other, gdir, tmp_path, TrainConfig(**TINY), run_name="r", resume=True)
    assert snapshot(run) == before

    # same inputs: accepted, nothing retrained; --overwrite replaces the run
    again = train_cv(feats, gdir, tmp_path, TrainConfig(**TINY), run_name="r")
    assert [r.status for r in again.folds] == ["skipped"]
    assert (run / "fold_0" / "model.safetensors").stat().st_mtime_ns == before["fold_0/model.safetensors"][1]
    new = train_cv(other, gdir, tmp_path, TrainConfig(**TINY), run_name="r", overwrite=True)
    assert [r.status for r in new.folds] == ["done"]
    assert json.loads((run / "config.json").read_text())["fingerprint_digest"] != cfg["fingerprint_digest"]


def test_old_run_without_fingerprint_is_refused(data, tmp_path):
    feats, gdir, _ = data
    train_cv(feats, gdir, tmp_path, TrainConfig(**TINY), run_name="old")
    cfg_path = tmp_path / "train" / "old" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["fingerprint"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(MismatchError, match="records no input fingerprint"):
        train_cv(feats, gdir, tmp_path, TrainConfig(**TINY), run_name="old")


# ----------------------------------------------------------------------------------------- resume state

def test_resume_with_changed_inputs_refused_before_writing(data, tmp_path):
    feats, gdir, _ = data
    cfg = dict(TINY, epochs=3)
    with pytest.raises(Stop):
        train_cv(feats, gdir, tmp_path, TrainConfig(**cfg), progress=_stop_at(2))
    run = tmp_path / "train" / "ghanet"
    state_dir = run / "fold_0" / "state"
    # ONE file, its epoch inside it (no state.json: the old two-file kill window is gone)
    assert sorted(p.name for p in state_dir.iterdir()) == [STATE_NAME]
    meta = read_state_metadata(state_dir)
    assert meta["epoch"] == "2" and meta["fold"] == "0"
    assert meta["fingerprint_digest"] == json.loads((run / "config.json").read_text())["fingerprint_digest"]
    before = snapshot(run)
    other = tmp_path / "feats2"
    shutil.copytree(feats, other)
    victim = sorted(other.glob("*.h5"))[-1]
    bag = read_bag(victim)
    write_bag(victim, bag.features[:-1], bag.coords[:-1], bag.attrs)
    with pytest.raises(MismatchError, match=f"features: 1 changed \\({victim.stem}"):
        train_cv(other, gdir, tmp_path, TrainConfig(**cfg), resume=True)
    assert snapshot(run) == before
    # with the original inputs the state is resumed at epoch 2: only epoch 3 is trained
    events = []
    train_cv(feats, gdir, tmp_path, TrainConfig(**cfg), resume=True,
             progress=lambda kind, **info: events.append((kind, info.get("epoch"))))
    assert ("resume", 2) in events and [e for k, e in events if k == "epoch"] == [3]


@pytest.mark.parametrize("damage", ["truncate", "other_fold", "bitflip", "legacy_json"])
def test_damaged_state_is_discarded_with_a_warning(data, tmp_path, caplog, damage):
    feats, gdir, _ = data
    cfg = dict(TINY, epochs=3)
    with pytest.raises(Stop):
        train_cv(feats, gdir, tmp_path, TrainConfig(**cfg), progress=_stop_at(2))
    state = tmp_path / "train" / "ghanet" / "fold_0" / "state" / STATE_NAME
    raw = state.read_bytes()
    if damage == "truncate":  # a torn write (what the atomic rename now prevents)
        state.write_bytes(raw[: len(raw) // 2])
    elif damage == "bitflip":  # tensor bytes changed after writing: the recorded SHA-256 catches it
        b = bytearray(raw)
        b[-5] ^= 0xFF
        state.write_bytes(bytes(b))
    elif damage == "other_fold":  # a state of fold 1 copied over fold 0's
        with pytest.raises(Stop):
            train_cv(feats, gdir, tmp_path / "o", TrainConfig(**dict(cfg, folds=[1])), progress=_stop_at(2))
        shutil.copy(tmp_path / "o" / "train" / "ghanet" / "fold_1" / "state" / STATE_NAME, state)
    else:  # the two-file format of older versions
        state.unlink()
        (state.parent / "state.json").write_text(json.dumps({"epoch": 2}))
        (state.parent / "state.safetensors.old").write_bytes(raw)
    events = []
    with caplog.at_level(logging.WARNING):
        train_cv(feats, gdir, tmp_path, TrainConfig(**cfg), resume=True,
                 progress=lambda kind, **info: events.append((kind, info.get("epoch"))))
    assert [e for k, e in events if k == "epoch"] == [1, 2, 3]  # restarted, not resumed from a bad state
    assert "resume state not used because" in caplog.text


# ----------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_pair_from_different_trainings_is_refused(data, tmp_path):
    from ghanet_pipeline.core.files import file_sha256
    from ghanet_pipeline.models import load_checkpoint

    feats, gdir, _ = data
    train_cv(feats, gdir, tmp_path, TrainConfig(**dict(TINY, folds=[0, 1])))
    run = tmp_path / "train" / "ghanet"
    load_checkpoint(run / "fold_0")
    # fold 1's weights under fold 0's model.json, with the hash updated (a careless copy): refused
    shutil.copy(run / "fold_1" / "model.safetensors", run / "fold_0" / "model.safetensors")
    meta = json.loads((run / "fold_0" / "model.json").read_text())
    meta["weights_sha256"] = file_sha256(run / "fold_0" / "model.safetensors")
    (run / "fold_0" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="belong to different trainings.*fold '1' vs '0'"):
        load_checkpoint(run / "fold_0")


# ----------------------------------------------------------------------------------------- temp files, locks

def test_stale_temps_of_live_processes_are_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        from ghanet_pipeline.core import files

        host = files._owner().rsplit("-", 1)[0]
        live = tmp_path / f".a.h5.{host}-{sleeper.pid}.x1.tmp"
        dead = tmp_path / f".a.h5.{host}-{2**22 + 12345}.x2.tmp"
        legacy = tmp_path / ".a.h5.abc123.tmp"
        for p in (live, dead, legacy):
            p.write_text("x")
        assert remove_stale_temps(tmp_path, ["a.h5"]) == 2
        assert live.exists() and not dead.exists() and not legacy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temps(tmp_path) == 1 and not live.exists()
    # an atomic write in progress is not removed by another job's cleanup
    with atomic_path(tmp_path / "b.json") as tmp:
        tmp.write_text("{}")
        assert remove_stale_temps(tmp_path) == 0 and tmp.exists()
    assert (tmp_path / "b.json").read_text() == "{}"


def _train_cmd(feats: Path, gdir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ghanet_pipeline", "train", "--features", str(feats), "--genomics", str(gdir),
            "--out", str(out), "--run-name", "par", "--epochs", "2", "--accum", "4", "--dim", "16",
            "--threads", "1", "--no-progress", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.slow
def test_parallel_fold_jobs_merge_into_one_complete_run(data, tmp_path):
    feats, gdir, _ = data
    procs = [subprocess.Popen(_train_cmd(feats, gdir, tmp_path, "--folds", str(k)), env=_env(),
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


def test_overwrite_refused_while_another_job_holds_the_run(data, tmp_path):
    feats, gdir, _ = data
    train_cv(feats, gdir, tmp_path, TrainConfig(**TINY), run_name="par")
    before = snapshot(tmp_path / "train" / "par")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from ghanet_pipeline.core.locks import OutputLocks
        locks = OutputLocks({str(tmp_path / 'train')!r}, "par")
        with locks.exclusive():
            locks.register_job()
        print("held", flush=True)
        time.sleep(120)
        """)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError, match="in use by 1 other train process"):
            train_cv(feats, gdir, tmp_path, TrainConfig(**TINY), run_name="par", overwrite=True)
        assert snapshot(tmp_path / "train" / "par") == before
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: the OS released its lock, its lock file is stale and --overwrite proceeds
    res = train_cv(feats, gdir, tmp_path, TrainConfig(**TINY), run_name="par", overwrite=True)
    assert [r.status for r in res.folds] == ["done"]
    assert not list((tmp_path / "train" / ".locks" / "par").glob("job-*"))


def test_checkpoint_fingerprint_names_the_folds_whose_weights_differ(data, tmp_path):
    from ghanet_pipeline.models.checkpoint import checkpoint_fingerprint

    feats, gdir, _ = data
    a = train_cv(feats, gdir, tmp_path, TrainConfig(**dict(TINY, folds=[0, 1])), run_name="a").run_dir
    b = train_cv(feats, gdir, tmp_path, TrainConfig(**dict(TINY, folds=[0, 1], seed=1)), run_name="b").run_dir
    fa = checkpoint_fingerprint([a / "fold_0", a / "fold_1"])
    assert checkpoint_fingerprint([a / "fold_0", a / "fold_1"]) == fa  # recomputed: equal
    digest = json.loads((a / "config.json").read_text())["fingerprint_digest"]
    assert fa["training"].items == {"fold_0": digest, "fold_1": digest}
    # run b: same inputs, other seed -> other weights of both folds
    mixed = checkpoint_fingerprint([a / "fold_0", b / "fold_1"])
    with pytest.raises(MismatchError) as exc:
        check_same(fa, mixed, "predictions in out/", "Use another --out.")
    assert "- model: 1 changed (fold_1:" in str(exc.value) and "- training:" in str(exc.value)


def test_safetensors_bytes_do_not_depend_on_the_process(tmp_path):
    """safetensors orders metadata by a per-process hash map; safeload.save_safetensors sorts them, so a
    checkpoint's weights_sha256 is the same in every run (kill + rerun gives identical files)."""
    code = textwrap.dedent("""
        import sys, torch
        from safetensors.torch import load_file
        from ghanet_pipeline.core.safeload import save_safetensors
        t = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(3, dtype=torch.float16)}
        save_safetensors(t, sys.argv[1], {k: str(i) for i, k in enumerate("hgfedcba")})
        back = load_file(sys.argv[1])
        assert torch.equal(back["b.weight"], t["b.weight"]) and torch.equal(back["a.bias"], t["a.bias"])
        """)
    shas = set()
    for i in range(3):
        path = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(path)], env=_env(), check=True)
        shas.add(hashlib.sha256(path.read_bytes()).hexdigest())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as fh:
        assert fh.metadata() == {k: str(i) for i, k in enumerate("hgfedcba")}
    assert len(shas) == 1


def test_reports_merged_from_finished_folds_on_disk_equal_the_ones_from_memory(data, tmp_path):
    """A rerun after a kill between a fold's end and the reports (or a second fold job) merges the
    reports from the fold files on disk: byte-identical to an uninterrupted run's."""
    feats, gdir, _ = data
    a = train_cv(feats, gdir, tmp_path / "a", TrainConfig(**TINY)).run_dir
    b = train_cv(feats, gdir, tmp_path / "b", TrainConfig(**TINY)).run_dir
    for f in ("predictions.csv", "metrics.json"):
        (b / f).unlink()
    again = train_cv(feats, gdir, tmp_path / "b", TrainConfig(**TINY))
    assert [r.status for r in again.folds] == ["skipped"]
    for f in ("predictions.csv", "metrics.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
