"""--protocol official|ghanet and --preset: the protocol table, the released loader's t-test groups,
carry-over gradient accumulation, presets, and `ghanet train --protocol official --preset tcga_blca`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import train_interrupted_after_epoch
from scipy import stats

from ghanet_pipeline.cli import cli
from ghanet_pipeline.core.errors import ConfigError
from ghanet_pipeline.demo.bags import write_synthetic_bags
from ghanet_pipeline.demo.cohort import make_cohort, write_cohort_tables
from ghanet_pipeline.genomics import GenomicsConfig
from ghanet_pipeline.genomics.selection import ttest_select
from ghanet_pipeline.models import load_checkpoint
from ghanet_pipeline.protocols.presets import PRESETS, PROTOCOLS, resolve
from ghanet_pipeline.protocols.released import balanced_class_weights, loader_risk_groups, official_loader_draw
from ghanet_pipeline.training.config import TrainConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module runs with one torch thread (conftest.one_torch_thread)."""


# ---------------------------------------------------------------- the table, presets, precedence

def test_protocols_differ_exactly_where_the_table_says():
    ours, official = PROTOCOLS["ghanet"], PROTOCOLS["official"]
    assert (ours.topk_rule, official.topk_rule) == ("ceil", "floor")
    assert (ours.bins_from, official.bins_from) == ("train", "cohort")
    assert (ours.ttest_groups, official.ttest_groups) == ("cases", "loader")
    assert (ours.accumulation, official.accumulation) == ("epoch", "carry-over")
    assert (ours.select, official.select) == ("final", "best-epoch")
    assert (ours.de_method, official.de_method) == ("auto", "ttest")


@pytest.mark.parametrize("name,topk,lr,de", [("tcga_blca", 0.20, 2e-4, None), ("tcga_luad", 0.20, 2e-4, None),
                                            ("tcga_brca", 0.15, 2e-4, None), ("tcga_gbmlgg", 0.15, 2e-4, None),
                                            ("tcga_ucec", 0.30, 1e-4, "none")])
def test_presets_resolve_to_the_papers_numbers(name, topk, lr, de):
    cfg = TrainConfig(preset=name)
    assert cfg.topk == topk and cfg.lr == lr
    assert cfg.option_sources["topk"] == f"preset {name}" and cfg.option_sources["lr"] == f"preset {name}"
    g = GenomicsConfig(table="t.csv", families="f.csv", preset=name)
    assert g.de_method == (de or "auto")
    assert set(PRESETS) == {"tcga_blca", "tcga_brca", "tcga_gbmlgg", "tcga_luad", "tcga_ucec"}


def test_explicit_values_win_over_preset_and_protocol_and_sources_are_recorded():
    cfg = TrainConfig(protocol="official", preset="tcga_ucec", lr=5e-4, select="final")
    assert cfg.lr == 5e-4 and cfg.topk == 0.30 and cfg.select == "final"
    assert cfg.topk_rule == "floor" and cfg.accumulation == "carry-over"
    assert cfg.option_sources == {"topk_rule": "protocol official", "accumulation": "protocol official",
                                  "select": "explicit", "topk": "preset tcga_ucec", "lr": "explicit"}
    plain = TrainConfig()
    assert (plain.lr, plain.topk, plain.select, plain.topk_rule, plain.accumulation) == \
        (2e-4, 0.2, "final", "ceil", "epoch")
    g = GenomicsConfig(table="t.csv", families="f.csv", protocol="official", preset="tcga_ucec", bins_from="train")
    assert (g.de_method, g.bins_from, g.ttest_groups, g.lfc) == ("none", "train", "loader", 0.0)
    values, sources = resolve("official", None, ("bins_from", "lfc"), {"bins_from": None, "lfc": 2.0})
    assert values == {"bins_from": "cohort", "lfc": 2.0} and sources["lfc"] == "explicit"
    with pytest.raises(ConfigError, match="official"):
        TrainConfig(protocol="paper")
    with pytest.raises(ConfigError, match="tcga_blca"):
        TrainConfig(preset="tcga_kirc")


# ---------------------------------------------------------------- the released loader's groups

def test_loader_draw_equals_a_real_weighted_sampler_dataloader():
    """What the released code does per fold: seed torch, iterate a DataLoader over the training split
    with WeightedRandomSampler(N / class size, N) and batch size 1."""
    from torch.utils.data import DataLoader, WeightedRandomSampler

    bins = np.array([0, 0, 1, 2, 3, 3, 3, 1, 2, 0, 2])
    cens = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0])
    for seed in (1, 7):
        cls = bins * 2 + cens
        weights = [len(cls) / float(np.sum(cls == c)) for c in cls]      # make_weights_for_balanced_classes
        torch.manual_seed(seed)
        loader = DataLoader(list(range(len(cls))), batch_size=1, sampler=WeightedRandomSampler(weights, len(weights)))
        drawn = [int(b[0]) for b in loader]
        assert official_loader_draw(bins, cens, seed).tolist() == drawn
    assert balanced_class_weights(bins, cens).tolist() == pytest.approx(weights)


def test_loader_groups_follow_the_released_rules():
    bins = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    cens = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    draw = official_loader_draw(bins, cens, 3)
    high, low = loader_risk_groups(bins, cens, 3)
    assert sorted(high.tolist()) == sorted(i for i in draw.tolist() if bins[i] < 2 and cens[i] == 0)
    assert sorted(low.tolist()) == sorted(i for i in draw.tolist() if bins[i] >= 2)
    assert len(draw) == 8 and len(set(draw.tolist())) < 8                # with replacement: repeats, gaps


def test_resampled_groups_t_test_matches_a_hand_computation():
    # one gene; high group drawn as cases [0, 0, 1] (case 0 twice), low as [3, 4, 4]
    x = pd.DataFrame({"G_rnaseq": [1.0, 2.0, 7.0, 10.0, 12.0]}, index=list("abcde"))
    sel = ttest_select(x, np.array([0, 0, 1]), np.array([3, 4, 4]), p_max=0.05)
    # by hand: high [1, 1, 2] mean 4/3 var 1/3; low [10, 12, 12] mean 34/3 var 4/3 (ddof 1)
    t = (4 / 3 - 34 / 3) / math.sqrt(1 / 9 + 4 / 9)                   # = -30 / sqrt(5) = -13.416
    df = (5 / 9) ** 2 / ((1 / 9) ** 2 / 2 + (4 / 9) ** 2 / 2)         # = 50 / 17
    assert sel.stats.loc["G_rnaseq", "t"] == pytest.approx(t)
    assert sel.stats.loc["G_rnaseq", "pvalue"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert (sel.n_high, sel.n_low) == (3, 3) and sel.selected == ["G_rnaseq"]
    once = ttest_select(x, np.array([True, True, False, False, False]), np.array([False, False, False, True, True]))
    assert once.stats.loc["G_rnaseq", "t"] == pytest.approx(-9.5 / math.sqrt(1.25))   # each case once differs


def _cohort_inputs(root: Path, n_cases: int = 24, seed: int = 3):
    cohort = make_cohort(n_cases=n_cases, seed=seed)
    return cohort, write_cohort_tables(cohort, root / "inputs", table_name="table.csv")


def test_official_genomics_uses_loader_groups_cohort_bins_and_records_the_protocol(tmp_path):
    from ghanet_pipeline.genomics import preprocess_genomics
    from ghanet_pipeline.genomics.bins import assign_bins, fit_bin_edges
    from ghanet_pipeline.genomics.selection import welch_ttest

    cohort, paths = _cohort_inputs(tmp_path)
    cfg = GenomicsConfig(table=str(paths["table"]), families=str(paths["families"]), folds=3, seed=1,
                         protocol="official")
    preprocess_genomics(cfg, tmp_path)
    gdir = tmp_path / "genomics"
    doc = json.loads((gdir / "config.json").read_text())
    assert doc["protocol"] == "official" and doc["de_method"] == "ttest"
    assert doc["config"]["ttest_groups"] == "loader" and doc["config"]["bins_from"] == "cohort"
    assert doc["config"]["option_sources"]["ttest_groups"] == "protocol official"
    cases = pd.read_csv(gdir / "cases.csv", dtype={"case_id": str}).set_index("case_id")
    edges = fit_bin_edges(cases.survival_months.to_numpy(), cases.censorship.to_numpy(),
                          cases.survival_months.min(), cases.survival_months.max())
    table = pd.read_csv(paths["table"]).drop_duplicates("case_id").set_index("case_id")
    for k in range(3):
        fdir = gdir / f"fold_{k}"
        assert json.loads((fdir / "bins.json").read_text())["edges_months"] == pytest.approx(edges.tolist())
        labels = pd.read_csv(fdir / "labels.csv", dtype={"case_id": str})
        train = labels[labels.split == "train"]
        # the draw is made over the training cases in cohort-table order
        order = sorted(train.case_id, key=list(cases.index).index)
        tr = train.set_index("case_id").loc[order]
        assert (assign_bins(tr.survival_months.to_numpy(), edges) == tr.bin.to_numpy()).all()
        high, low = loader_risk_groups(tr.bin.to_numpy(), tr.censorship.to_numpy(), seed=1)
        groups = pd.read_csv(fdir / "risk_groups.csv", dtype={"case_id": str}).set_index("case_id")
        draws = pd.Series(np.bincount(np.concatenate([high, low]), minlength=len(order)), index=order)
        assert (groups.loc[order, "draws"] == draws).all()
        de = pd.read_csv(fdir / "de_stats.csv").set_index("feature")
        feats = list(de.index)
        x = table.loc[order, feats].to_numpy(float)
        _, p = welch_ttest(x[high], x[low])
        finite = np.isfinite(de.pvalue.to_numpy())
        np.testing.assert_allclose(de.pvalue.to_numpy()[finite], p[finite], rtol=1e-9)
    # the loader seed is part of the fingerprint: another seed gives other groups, so it is refused
    with pytest.raises(Exception, match="other inputs or parameters"):
        preprocess_genomics(GenomicsConfig(table=str(paths["table"]), families=str(paths["families"]), folds=3,
                                           seed=1, protocol="official", splits=str(gdir / "splits")), tmp_path)


# ---------------------------------------------------------------- carry-over accumulation

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
    from ghanet_pipeline.training import loop

    _register_toy()
    made: list[_RecordingSGD] = []
    monkeypatch.setattr(loop, "make_optimizer", lambda model, lr, wd: made.append(_RecordingSGD(
        model.parameters())) or made[-1])
    ids = ["a", "b", "c", "v1", "v2"]
    labels = pd.DataFrame({"survival_months": [5.0, 20.0, 60.0, 30.0, 40.0], "censorship": [0, 1, 0, 0, 1],
                           "bin": [0, 1, 3, 2, 2]}, index=pd.Index(ids, name="case_id"))
    onehot = {c: np.eye(4, dtype=np.float32)[[min(i, 3)] * 2] for i, c in enumerate(ids)}
    fold = SimpleNamespace(train_ids=["a", "b", "c"], val_ids=["v1", "v2"], labels=labels, families=[],
                           selected={}, targets={}, bin_edges_months=[0, 10, 25, 50, 100], scaler=None)
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


# ---------------------------------------------------------------- end to end

def test_train_protocol_official_preset_blca_end_to_end(tmp_path):
    cohort, paths = _cohort_inputs(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["preprocess-genomics", "--table", str(paths["table"]), "--families",
                              str(paths["families"]), "--folds", "3", "--protocol", "official", "--seed", "1",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    feats = tmp_path / "features" / "synthetic"
    write_synthetic_bags(cohort, feats, n_patches=(20, 40), seed=3)
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
def test_carry_over_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    """16 training cases, accum 5: every epoch leaves 1 case's gradient pending; an interruption after
    epoch 2 must keep it (saved in the resume state) for the resumed run to equal the uninterrupted one."""
    from ghanet_pipeline.genomics import preprocess_genomics
    from ghanet_pipeline.training.cv import train_cv

    cohort, paths = _cohort_inputs(tmp_path)
    preprocess_genomics(GenomicsConfig(table=str(paths["table"]), families=str(paths["families"]), folds=3,
                                       protocol="official", seed=1), tmp_path)
    feats = tmp_path / "features"
    write_synthetic_bags(cohort, feats, n_patches=(20, 40), seed=3)
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


def test_ucec_preset_keeps_every_gene_and_says_the_loader_groups_are_unused(tmp_path):
    from ghanet_pipeline.genomics import preprocess_genomics

    _, paths = _cohort_inputs(tmp_path)
    res = preprocess_genomics(GenomicsConfig(table=str(paths["table"]), families=str(paths["families"]), folds=3,
                                             protocol="official", preset="tcga_ucec"), tmp_path)
    doc = json.loads((tmp_path / "genomics" / "config.json").read_text())
    assert res.de_method == "none" and doc["config"]["option_sources"]["de_method"] == "preset tcga_ucec"
    assert any("apply to the t-test only" in n for n in doc["notes"])
    selected = json.loads((tmp_path / "genomics" / "fold_0" / "selected.json").read_text())
    assert {m.name: len(m.features) for m in res.matches} == {k: len(v) for k, v in selected.items()}


def test_official_rule_on_bags_too_small_fails_the_fold_naming_the_cases(tmp_path):
    from ghanet_pipeline.genomics import preprocess_genomics
    from ghanet_pipeline.training.cv import train_cv

    cohort, paths = _cohort_inputs(tmp_path)
    preprocess_genomics(GenomicsConfig(table=str(paths["table"]), families=str(paths["families"]), folds=3,
                                       protocol="official"), tmp_path)
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
