"""preprocess-genomics under --protocol official and the presets: loader-drawn t-test groups (a case drawn twice
counts twice), bins fitted on the cohort, the protocol recorded."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ghanet_pipeline.genomics import GenomicsConfig
from ghanet_pipeline.genomics.selection import ttest_select
from ghanet_pipeline.protocols.released import loader_risk_groups


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


def test_official_genomics_uses_loader_groups_cohort_bins_and_records_the_protocol(synthetic_study, tmp_path):
    from ghanet_pipeline.genomics import preprocess_genomics
    from ghanet_pipeline.genomics.bins import assign_bins, fit_bin_edges
    from ghanet_pipeline.genomics.selection import welch_ttest

    paths = synthetic_study.tables
    cfg = synthetic_study.genomics_config(folds=3, seed=1, protocol="official")
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


def test_ucec_preset_keeps_every_gene_and_says_the_loader_groups_are_unused(synthetic_study, tmp_path):
    from ghanet_pipeline.genomics import preprocess_genomics

    res = preprocess_genomics(synthetic_study.genomics_config(folds=3, protocol="official", preset="tcga_ucec"),
                              tmp_path)
    doc = json.loads((tmp_path / "genomics" / "config.json").read_text())
    assert res.de_method == "none" and doc["config"]["option_sources"]["de_method"] == "preset tcga_ucec"
    assert any("apply to the t-test only" in n for n in doc["notes"])
    selected = json.loads((tmp_path / "genomics" / "fold_0" / "selected.json").read_text())
    assert {m.name: len(m.features) for m in res.matches} == {k: len(v) for k, v in selected.items()}
