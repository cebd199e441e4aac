"""``train --precision``: bf16 autocast of the forward passes (training/loop.py), recorded with the run, part of
what a resumed run must share; fp32 stays exactly what it was (env/runtime.py resolves ``auto``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ghanet_pipeline.core.errors import MismatchError
from ghanet_pipeline.testing import train_tiny
from ghanet_pipeline.training.config import TrainConfig, config_hash


def _risks(run_dir) -> pd.Series:
    return pd.read_csv(run_dir / "predictions.csv").set_index("case_id")["risk"].sort_index()


def test_bf16_training_runs_is_recorded_and_stays_close_to_fp32(synthetic_study, tmp_path):
    """bf16: another arithmetic (risks differ from fp32's) but the same model (risks follow fp32's); the run's
    config.json and every checkpoint say bf16; auto on this machine is the fp32 run bit for bit."""
    runs = {p: train_tiny(synthetic_study, tmp_path, run_name=p, precision=p) for p in ("bf16", "fp32", "auto")}
    for prec, res in runs.items():
        assert all(f.status == "done" for f in res.folds), res.folds
        want = "fp32" if prec == "auto" else prec  # no bf16 instructions here, and TRAIN_BF16_AUTO is False
        assert json.loads((res.run_dir / "config.json").read_text())["precision"] == want
        for k in (0, 1):
            assert json.loads((res.run_dir / f"fold_{k}" / "model.json").read_text())["train_precision"] == want
    fp32, bf16 = _risks(runs["fp32"].run_dir), _risks(runs["bf16"].run_dir)
    assert np.array_equal(_risks(runs["auto"].run_dir).to_numpy(), fp32.to_numpy())
    assert list(fp32.index) == list(bf16.index)
    assert not np.array_equal(fp32.to_numpy(), bf16.to_numpy())
    # the same model trained in another arithmetic: its risks follow fp32's (0.79 measured; unrelated models ~0).
    # This 2-epoch, 16-wide model barely separates cases (risk sd 0.05), so this is no fidelity figure: that is
    # benchmarks/compare_precisions.py --compare train-bf16 (docs/fidelity.md, "Training precision")
    assert fp32.rank().corr(bf16.rank()) >= 0.5, pd.concat([fp32, bf16], axis=1)


def test_precision_is_part_of_the_options_a_rerun_shares(synthetic_study, trained_run, tmp_path):
    """fp32 keeps the hash and fingerprint runs had before the option existed; a finished fp32 run trained
    again into the same folder with bf16 is refused (naming the options) before anything is written."""
    import hashlib
    import shutil

    from ghanet_pipeline.testing import snapshot
    from ghanet_pipeline.training.config import PROTOCOL_KEYS, protocol_options

    fp32, bf16 = TrainConfig(precision="fp32"), TrainConfig(precision="bf16")
    assert protocol_options(fp32) == {k: getattr(fp32, k) for k in PROTOCOL_KEYS}
    before_option = hashlib.sha256(json.dumps({k: getattr(fp32, k) for k in PROTOCOL_KEYS}, sort_keys=True
                                              ).encode()).hexdigest()[:16]
    assert config_hash(fp32) == before_option != config_hash(bf16)
    out = tmp_path / "out"
    shutil.copytree(trained_run, out)
    before = snapshot(out)
    with pytest.raises(MismatchError, match="options"):
        train_tiny(synthetic_study, out, precision="bf16")
    assert snapshot(out) == before
