"""Crash-safe resume state of `ghanet train` (training/state.py): one file, checked before use, damaged ones discarded."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ghanet_pipeline.core.errors import MismatchError
from ghanet_pipeline.features.bags import read_bag, write_bag
from ghanet_pipeline.testing import (
    TINY_TRAIN,
    Interrupted,
    snapshot,
    stop_after_epoch,
    train_interrupted_after_epoch,
)
from ghanet_pipeline.training.config import TrainConfig
from ghanet_pipeline.training.cv import train_cv
from ghanet_pipeline.training.state import STATE_NAME, read_state_metadata

#: the options of the session's ``trained_run`` (2 epochs), on fold 0 only: its fold 0 is the uninterrupted run
TINY = dict(TINY_TRAIN, folds=[0])


@pytest.fixture
def data(synthetic_study):
    """(bags folder, genomics folder, cohort) of the session's synthetic study (read-only)."""
    return synthetic_study.features, synthetic_study.genomics, synthetic_study.cohort


@pytest.fixture(scope="module")
def interrupted(synthetic_study, tmp_path_factory) -> Path:
    """An out folder whose training (TINY) was stopped like Ctrl-C after epoch 1 of 2: fold 0 has a resume
    state. Shared by this module's tests: each copies it first (:func:`_copy_of`)."""
    out = tmp_path_factory.mktemp("interrupted")
    train_interrupted_after_epoch(1, synthetic_study.features, synthetic_study.genomics, out, TrainConfig(**TINY))
    return out


def _copy_of(interrupted: Path, dst: Path) -> Path:
    shutil.copytree(interrupted, dst)
    return dst


def _epochs(events: list) -> list[int]:
    return [e for k, e in events if k == "epoch"]


def _recording(events: list, stop_after: int | None = None):
    """A train_cv progress callback appending (kind, epoch) to ``events``; stops (Ctrl-C) after ``stop_after``."""

    def progress(kind: str, **info: object) -> None:
        events.append((kind, info.get("epoch")))
        if kind == "epoch" and info["epoch"] == stop_after:
            raise Interrupted()

    return progress


def test_resume_after_interruption_is_identical_and_refuses_changed_inputs(data, interrupted, trained_run, tmp_path):
    """The state is one file holding its epoch; other inputs are refused before anything is written; with the
    same ones only epoch 2 is trained and the result equals the uninterrupted run's (``trained_run``'s fold 0);
    a finished fold is kept."""
    feats, gdir, _ = data
    cfg = TrainConfig(**TINY)

    out = _copy_of(interrupted, tmp_path / "b")
    run = out / "train" / "ghanet"
    fold_dir, state_dir = run / "fold_0", run / "fold_0" / "state"
    # ONE file, its epoch inside it (no state.json: the old two-file kill window is gone); no model yet
    assert sorted(p.name for p in state_dir.iterdir()) == [STATE_NAME] and not (fold_dir / "model.json").exists()
    meta = read_state_metadata(state_dir)
    assert meta["epoch"] == "1" and meta["fold"] == "0"
    assert meta["fingerprint_digest"] == json.loads((run / "config.json").read_text())["fingerprint_digest"]
    # other bags (one bag lost a patch): refused, naming it, before anything is written
    before = snapshot(run)
    other = tmp_path / "feats2"
    shutil.copytree(feats, other)
    victim = sorted(other.glob("*.h5"))[-1]
    bag = read_bag(victim)
    write_bag(victim, bag.features[:-1], bag.coords[:-1], bag.attrs)
    with pytest.raises(MismatchError, match=f"features: 1 changed \\({victim.stem}"):
        train_cv(other, gdir, out, cfg, resume=True)
    assert snapshot(run) == before
    # with the original inputs the state is resumed after epoch 1: only epoch 2 is trained, same result
    events = []
    res = train_cv(feats, gdir, out, cfg, resume=True,
                   progress=lambda kind, **info: events.append((kind, info.get("epoch"))))
    assert ("resume", 1) in events and _epochs(events) == [2]
    a = pd.read_csv(trained_run / "train" / "tiny" / "fold_0" / "predictions.csv").set_index("case_id")
    b = pd.read_csv(res.run_dir / "predictions.csv").set_index("case_id")
    assert sorted(a.index) == sorted(b.index)
    np.testing.assert_allclose(a.loc[b.index, "risk"], b["risk"], rtol=1e-5, atol=1e-6)
    assert not state_dir.exists()
    # a finished fold is not retrained; other options refuse to resume
    mtime = (fold_dir / "model.safetensors").stat().st_mtime_ns
    again = train_cv(feats, gdir, out, cfg, resume=True)
    assert [r.status for r in again.folds] == ["skipped"]
    assert (fold_dir / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(MismatchError, match=r"options: 1 changed \(lr"):
        train_cv(feats, gdir, out, TrainConfig(**dict(TINY, lr=1e-3)), resume=True)
    # another fold trained later into the same run: the reports cover both folds
    more = train_cv(feats, gdir, out, TrainConfig(**dict(TINY, folds=[1])))
    assert [r.item for r in more.folds] == ["fold 1"]
    assert set(more.metrics["c_index_per_fold"]) == {"0", "1"}
    assert set(pd.read_csv(more.run_dir / "predictions.csv").fold) == {0, 1}


def test_without_resume_an_interrupted_fold_starts_again(data, interrupted, tmp_path):
    feats, gdir, _ = data
    out = _copy_of(interrupted, tmp_path / "c")
    events = []
    train_cv(feats, gdir, out, TrainConfig(**TINY), progress=lambda kind, **info: events.append((kind, info.get("epoch"))))
    assert _epochs(events) == [1, 2] and ("resume", 1) not in events
    assert not (out / "train" / "ghanet" / "fold_0" / "state").exists()


@pytest.mark.parametrize("damage", ["truncate", "other_fold", "bitflip", "legacy_json"])
def test_damaged_state_is_discarded_with_a_warning(data, interrupted, tmp_path, caplog, damage):
    feats, gdir, _ = data
    cfg = TINY
    out = _copy_of(interrupted, tmp_path / "out")
    state = out / "train" / "ghanet" / "fold_0" / "state" / STATE_NAME
    raw = state.read_bytes()
    if damage == "truncate":  # a torn write (what the atomic rename now prevents)
        state.write_bytes(raw[: len(raw) // 2])
    elif damage == "bitflip":  # tensor bytes changed after writing: the recorded SHA-256 catches it
        b = bytearray(raw)
        b[-5] ^= 0xFF
        state.write_bytes(bytes(b))
    elif damage == "other_fold":  # a state of fold 1 copied over fold 0's
        with pytest.raises(Interrupted):
            train_cv(feats, gdir, tmp_path / "o", TrainConfig(**dict(cfg, folds=[1])), progress=stop_after_epoch(1))
        shutil.copy(tmp_path / "o" / "train" / "ghanet" / "fold_1" / "state" / STATE_NAME, state)
    else:  # the two-file format of older versions
        state.unlink()
        (state.parent / "state.json").write_text(json.dumps({"epoch": 1}))
        (state.parent / "state.safetensors.old").write_bytes(raw)
    events = []
    with caplog.at_level(logging.WARNING), pytest.raises(Interrupted):  # stopped once epoch 1 is trained again
        train_cv(feats, gdir, out, TrainConfig(**cfg), resume=True, progress=_recording(events, stop_after=1))
    assert _epochs(events) == [1] and not [k for k, _ in events if k == "resume"]  # restarted, not resumed
    assert "resume state not used because" in caplog.text


def test_finished_fold_predictions_are_read_back_exactly(tmp_path):
    """A rerun that skips a finished fold rebuilds the run's reports from its predictions.csv: the numbers
    must be the very floats that were written (pandas' default parser was off in the last digit)."""
    import pandas as pd

    from ghanet_pipeline.training.state import load_finished_fold

    risks = [-1.0564898252487183, 0.1 + 0.2, -2.718281828459045, 1e-17 + 0.3]
    pd.DataFrame({"fold": 0, "case_id": ["a", "b", "c", "d"], "risk": risks}).to_csv(tmp_path / "predictions.csv",
                                                                                   index=False)
    (tmp_path / "history.json").write_text(json.dumps({"epochs": [], "selected_epoch": 1}))
    (tmp_path / "model.json").write_text(json.dumps({"train_risk_median": 0.0}))
    got = load_finished_fold(tmp_path, 0).predictions["risk"].tolist()
    assert got == risks  # exact, not approx


