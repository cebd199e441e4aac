"""Differential selection: Welch t-test equals scipy; both methods recover planted genes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ghanet_pipeline.core.errors import InputError
from ghanet_pipeline.demo.cohort import make_cohort
from ghanet_pipeline.genomics.bins import assign_bins, fit_bin_edges
from ghanet_pipeline.genomics.selection import choose_method, deseq2_select, risk_groups, ttest_select, welch_ttest


@pytest.mark.filterwarnings("ignore:Precision loss")
def test_welch_matches_scipy_per_column():
    rng = np.random.default_rng(0)
    a = rng.normal(0.3, 1.0, (9, 40))
    b = rng.normal(0.0, 2.0, (14, 40))
    a[:, 0] = 5.0          # constant in a only
    a[:, 1], b[:, 1] = 1.0, 2.0   # both constant, means differ -> inf / p = 0
    t, p = welch_ttest(a, b)
    for j in range(a.shape[1]):
        ref = stats.ttest_ind(a[:, j], b[:, j], equal_var=False)
        np.testing.assert_allclose(t[j], ref.statistic, rtol=1e-10)
        np.testing.assert_allclose(p[j], ref.pvalue, rtol=1e-8, atol=1e-300)


@pytest.mark.filterwarnings("ignore:Precision loss")
def test_ttest_protocol_on_small_table_and_constant_features():
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(20, 6)), columns=list("abcdef"))
    x["b"] += np.r_[np.full(10, 2.0), np.zeros(10)]
    x["c"] = 3.0                            # constant: dropped
    high = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    low = ~high
    low[-1] = False                         # a case outside both groups is ignored
    sel = ttest_select(x, high, low, p_max=0.05)
    ref = {c: stats.ttest_ind(x[c][high], x[c][low], equal_var=False).pvalue for c in x.columns}
    assert sel.selected == [c for c in x.columns if np.isfinite(ref[c]) and ref[c] < 0.05]
    assert "b" in sel.selected and "c" not in sel.selected
    assert bool(sel.stats.loc["c", "constant"]) and np.isnan(sel.stats.loc["c", "pvalue"])
    assert (sel.n_high, sel.n_low) == (10, 9)


def test_risk_groups():
    bins = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    cens = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    high, low = risk_groups(bins, cens)
    assert high.tolist() == [True, False, True, False, False, False, False, False]
    assert low.tolist() == [False, False, False, False, True, True, True, True]


def test_too_few_cases_in_a_group_is_a_clear_error():
    x = pd.DataFrame(np.random.default_rng(0).normal(size=(6, 3)))
    high = np.array([1, 0, 0, 0, 0, 0], bool)
    with pytest.raises(InputError, match=r"fold 2: only 1 high-risk .* 5 low-risk .*--de-method none"):
        ttest_select(x, high, ~high, fold_label="fold 2")
    with pytest.raises(InputError, match="fold 2: only 1 high-risk"):
        deseq2_select(x.abs().round().astype(int), high, ~high, fold_label="fold 2")


def test_choose_method():
    ints = pd.DataFrame({"a": [0, 5, 12], "b": [3, 0, 1]})
    assert choose_method("auto", ints)[0] == "deseq2"
    assert choose_method("auto", ints + 0.5)[0] == "ttest"
    assert choose_method("auto", ints - 20)[0] == "ttest"
    assert choose_method("auto", pd.DataFrame({"m": [0, 1, 1]}))[0] == "ttest"   # binary mutations
    assert choose_method("ttest", ints) == ("ttest", "requested")


def _groups(cohort):
    cases = cohort.cases
    edges = fit_bin_edges(cases["survival_months"], cases["censorship"], cases["survival_months"].min(),
                          cases["survival_months"].max())
    bins = assign_bins(cases["survival_months"], edges)
    return cases.index, risk_groups(bins, cases["censorship"].to_numpy())


@pytest.fixture(scope="module")
def cohort():
    return make_cohort(n_cases=160, seed=5, genes_per_family=(12, 16), n_planted_per_family=4)


def test_ttest_recovers_planted_genes(cohort):
    ids, (high, low) = _groups(cohort)
    x = cohort.table.drop_duplicates("case_id").set_index("case_id").loc[ids]
    x = x[[f"{g}_rnaseq" for g in cohort.genes]]
    sel = ttest_select(x, high, low, p_max=0.05)
    chosen = {c[: -len("_rnaseq")] for c in sel.selected}
    planted = cohort.planted_genes
    noise = set(cohort.genes) - planted
    assert len(chosen & planted) == len(planted)            # recall 1
    assert len(chosen & noise) <= max(3, int(0.12 * len(noise)))   # ~5 % expected by chance


def test_deseq2_recovers_planted_genes(cohort):
    ids, (high, low) = _groups(cohort)
    counts = cohort.counts.T.loc[ids]
    sel = deseq2_select(counts, high, low, padj_max=0.05, lfc_min=1.0, n_cpus=1)
    chosen = set(sel.selected)
    planted = cohort.planted_genes
    assert len(chosen & planted) >= len(planted) - 1
    assert len(chosen - planted) <= 1
    # high-risk patients (high phenotype) express planted genes more: positive log2FC high vs low
    assert (sel.stats.loc[sorted(planted), "log2FoldChange"] > 0).all()
    # without the fold-change threshold more genes may pass, never fewer
    assert set(deseq2_select(counts, high, low, lfc_min=0.0).selected) >= chosen
