"""Training under --protocol official: carry-over gradient accumulation (kept in the resume state), the floor
top-k rule on small bags, and `ghanet train --protocol official --preset tcga_blca`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.demo.bags import write_synthetic_bags
from ghanet_pipeline.models import load_checkpoint
from ghanet_pipeline.testing import train_interrupted_after_epoch
from ghanet_pipeline.training.config import TrainConfig


class _Toy(torch.nn.Module):
    """logits = mean patch features @ W; with one-hot bags, row i of W's gradient belongs to case i."""

    name = "toy_accum"
    needs_genomics = False

    def __init__(self, in_dim: int = 4, n_bins: int = 4, dim: int = 8, dropout: float = 0.0):
        super().__init__()
        self.config = {"in_dim": in_dim, "n_bins": n_bins, "dim": dim, "dropout": dropout}
        self.W = torch.nn.Parameter(torch.zeros(in_dim, n_bins))

    def forward(self, features):
        from ghanet_pipeline.models.layers import survival_outputs

        return survival_outputs((features.float().mean(0) @ self.W).unsqueeze(0))


def _register_toy():
    from ghanet_pipeline.models import MODELS

    if "toy_accum" not in MODELS:
        MODELS.register("toy_accum", _Toy)


class _RecordingSGD(torch.optim.SGD):
    """lr 0 (weights never change, so every case's gradient stays the same) and a log of each step's grad."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.steps: list[torch.Tensor] = []

    def step(self, closure=None):
        self.steps.append(self.param_groups[0]["params"][0].grad.detach().clone())
        return super().step(closure)


def _toy_fold(tmp_path: Path, accumulation: str, monkeypatch):
    from ghanet_pipeline.genomics import FoldData
    from ghanet_pipeline.training import loop

    _register_toy()
    made: list[_RecordingSGD] = []
    monkeypatch.setattr(loop, "make_optimizer", lambda model, lr, wd: made.append(_RecordingSGD(
        model.parameters())) or made[-1])
    ids = ["a", "b", "c", "v1", "v2"]
    labels = pd.DataFrame({"survival_months": [5.0, 20.0, 60.0, 30.0, 40.0], "censorship": [0, 1, 0, 0, 1],
                           "bin": [0, 1, 3, 2, 2]}, index=pd.Index(ids, name="case_id"))
    onehot = {c: np.eye(4, dtype=np.float32)[[min(i, 3)] * 2] for i, c in enumerate(ids)}
    fold = FoldData(fold=0, train_ids=["a", "b", "c"], val_ids=["v1", "v2"], labels=labels, families=[],
                    selected={}, targets={}, bin_edges_months=[0, 10, 25, 50, 100], scaler={})
    bags = SimpleNamespace(cases=lambda: ids, features=lambda c: onehot[c], dim=4, segment_params=None)
    cfg = TrainConfig(model="toy_accum", epochs=2, accum=2, dim=8, dropout=0.0, accumulation=accumulation,
                      device="cpu")
    loop.train_fold(0, fold, bags, cfg, tmp_path / accumulation, {})
    return made[0].steps, labels


def _case_grad(case: str, labels: pd.DataFrame) -> torch.Tensor:
    """d loss / d W of one case at W = 0 (its row only)."""
    from ghanet_pipeline.models.survival import nll_loss

    i = ["a", "b", "c"].index(case)
    W = torch.zeros(4, 4, requires_grad=True)
    h = torch.sigmoid((torch.eye(4)[i] @ W).unsqueeze(0))
    nll_loss(h, torch.cumprod(1 - h, 1), torch.tensor([int(labels.loc[case, "bin"])]),
             torch.tensor([float(labels.loc[case, "censorship"])])).backward()
    return W.grad


def test_carry_over_accumulation_keeps_the_epoch_leftover_and_drops_the_last(tmp_path, monkeypatch):
    from ghanet_pipeline.training.data import balanced_order

    epoch_steps, labels = _toy_fold(tmp_path, "epoch", monkeypatch)
    carry_steps, _ = _toy_fold(tmp_path, "carry-over", monkeypatch)
    bins, cens = labels.loc[["a", "b", "c"], "bin"].to_numpy(), labels.loc[["a", "b", "c"], "censorship"].to_numpy()
    o = [[["a", "b", "c"][i] for i in balanced_order(bins, cens, 0, 0, e)] for e in range(2)]
    g = {c: _case_grad(c, labels) / 2 for c in "abc"}                         # loss / accum, accum = 2

    def total(cases):
        return sum((g[c] for c in cases), torch.zeros(4, 4))

    # 3 cases per epoch, accum 2. ours: [o0 0-1], [o0 2] (partial step at epoch end), [o1 0-1], [o1 2]
    expect_epoch = [o[0][:2], o[0][2:], o[1][:2], o[1][2:]]
    # released code: [o0 0-1], [o0 2 + o1 0-1] (3 cases in one step), o1's last case is never applied
    expect_carry = [o[0][:2], o[0][2:] + o[1][:2]]
    assert len(epoch_steps) == 4 and len(carry_steps) == 2
    for got, cases in zip(epoch_steps, expect_epoch, strict=True):
        torch.testing.assert_close(got, total(cases))
    for got, cases in zip(carry_steps, expect_carry, strict=True):
        torch.testing.assert_close(got, total(cases))


def test_resume_state_keeps_pending_gradients(tmp_path):
    from ghanet_pipeline.training.state import load_state, make_optimizer, save_state

    _register_toy()
    m = _Toy()
    m.W.grad = torch.arange(16.0).reshape(4, 4)
    opt = make_optimizer(m, 1e-3, 0.0)
    save_state(tmp_path, m, opt, None, {"epoch": 1, "history": [], "config_hash": "h"})
    m2 = _Toy()
    load_state(tmp_path, m2, make_optimizer(m2, 1e-3, 0.0), "h")
    torch.testing.assert_close(m2.W.grad, m.W.grad)


def test_train_protocol_official_preset_blca_end_to_end(synthetic_study, tmp_path):
    paths = synthetic_study.tables
    runner = CliRunner()
    res = runner.invoke(cli, ["preprocess-genomics", "--table", str(paths["table"]), "--families",
                              str(paths["families"]), "--folds", "3", "--protocol", "official", "--seed", "1",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    feats = synthetic_study.features
    res = runner.invoke(cli, ["train", "--features", str(feats), "--out", str(tmp_path), "--protocol", "official",
                              "--preset", "tcga_blca", "--epochs", "2", "--accum", "4", "--dim", "32",
                              "--folds", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "train" / "ghanet"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["protocol"] == "official" and cfg["preset"] == "tcga_blca" and cfg["genomics_protocol"] == "official"
    assert cfg["topk"] == 0.2 and cfg["lr"] == 2e-4
    assert cfg["topk_rule"] == "floor" and cfg["accumulation"] == "carry-over" and cfg["select"] == "best-epoch"
    assert cfg["option_sources"]["topk"] == "preset tcga_blca" and cfg["option_sources"]["select"] == \
        "protocol official"
    assert json.loads((tmp_path / "genomics" / "fold_0" / "bins.json").read_text())["fitted_on"] == "cohort"
    model, meta = load_checkpoint(run / "fold_0")
    assert meta["protocol"] == "official" and meta["model_config"]["topk_rule"] == "floor"
    assert model.hsb.topk_rule == "floor"
    m = json.loads((run / "metrics.json").read_text())
    assert m["protocol"] == "official" and m["optimistic"] is True
    assert "OPTIMISTIC" in res.output
    # explicit flags win over the protocol and the preset, and are recorded as such
    res = runner.invoke(cli, ["train", "--features", str(feats), "--out", str(tmp_path), "--protocol", "official",
                              "--preset", "tcga_blca", "--topk-rule", "ceil", "--accumulation", "epoch", "--select",
                              "final", "--lr", "1e-3", "--epochs", "1", "--dim", "32", "--folds", "0",
                              "--run-name", "explicit", "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "train" / "explicit" / "config.json").read_text())
    assert (cfg["topk_rule"], cfg["accumulation"], cfg["select"], cfg["lr"], cfg["topk"]) == \
        ("ceil", "epoch", "final", 1e-3, 0.2)
    assert cfg["option_sources"] == {"topk_rule": "explicit", "accumulation": "explicit", "select": "explicit",
                                     "topk": "preset tcga_blca", "lr": "explicit"}


@pytest.mark.slow
def test_carry_over_resume_is_identical_to_an_uninterrupted_run(synthetic_study, tmp_path):
    """16 training cases, accum 5: every epoch leaves 1 case's gradient pending; an interruption after
    epoch 2 must keep it (saved in the resume state) for the resumed run to equal the uninterrupted one."""
    from ghanet_pipeline.genomics import preprocess_genomics
    from ghanet_pipeline.training.cv import train_cv

    preprocess_genomics(synthetic_study.genomics_config(folds=3, protocol="official", seed=1), tmp_path)
    feats = synthetic_study.features
    gdir = tmp_path / "genomics"
    cfg = dict(protocol="official", epochs=3, accum=5, dim=32, lr=5e-4, folds=[0], select="final")
    ref = train_cv(feats, gdir, tmp_path / "a", TrainConfig(**cfg))

    train_interrupted_after_epoch(2, feats, gdir, tmp_path / "b", TrainConfig(**cfg))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "b" / "train" / "ghanet" / "fold_0" / "state" / "state.safetensors"), "pt") as f:
        assert any(k.startswith("grad.") for k in f.keys())
    res = train_cv(feats, gdir, tmp_path / "b", TrainConfig(**cfg), resume=True)
    a = pd.read_csv(ref.run_dir / "predictions.csv")
    b = pd.read_csv(res.run_dir / "predictions.csv")
    np.testing.assert_allclose(a["risk"], b["risk"], rtol=1e-5, atol=1e-6)


def test_official_rule_on_bags_too_small_fails_the_fold_naming_the_cases(synthetic_study, tmp_path):
    from ghanet_pipeline.genomics import preprocess_genomics
    from ghanet_pipeline.training.cv import train_cv

    cohort = synthetic_study.cohort
    preprocess_genomics(synthetic_study.genomics_config(folds=3, protocol="official"), tmp_path)
    feats = tmp_path / "features"
    write_synthetic_bags(cohort, feats, n_patches=(3, 4), seed=3)            # int(4 x 0.2) = 0
    res = train_cv(feats, tmp_path / "genomics", tmp_path, TrainConfig(protocol="official", epochs=1, dim=32,
                                                                       folds=[0]))
    (fold,) = res.folds
    assert fold.status == "failed"
    assert "selects no patch" in fold.message and "--topk-rule ceil" in fold.message
    assert any(c in fold.message for c in cohort.cases.index)
    ok = train_cv(feats, tmp_path / "genomics", tmp_path, TrainConfig(protocol="official", topk_rule="ceil",
                                                                      epochs=1, dim=32, folds=[0]), run_name="ceil")
    assert [r.status for r in ok.folds] == ["done"]
