"""The controlled distillation cohort (planted rare patches, genes that follow them) and the paired
statistics of model comparisons."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ghanet_pipeline.demo.distill_cohort import DistillCohortSpec, make_distill_cohort, planted_direction
from ghanet_pipeline.demo.distill_experiment import mask_auc
from ghanet_pipeline.evaluation.paired import paired_difference, t_interval
from ghanet_pipeline.features.bags import read_bag


def test_cohort_plants_a_rare_share_that_drives_genes_and_hazard(tmp_path):
    spec = DistillCohortSpec(n_cases=40, seed=2)
    c = make_distill_cohort(spec, tmp_path)
    cases = c.cohort.cases
    assert len(c.masks) == 40 and len(list(c.features.glob("*.h5"))) == 40
    share = {sid[:-3]: m.mean() for sid, m in c.masks.items()}
    ph = cases["phenotype"]
    # the planted share follows the phenotype, from 0 up to share_max
    assert max(share.values()) <= spec.share_max + 0.06 and min(share.values()) < 0.02
    assert stats.spearmanr([share[i] for i in ph.index], ph).statistic > 0.8
    # planted genes follow the phenotype closely, other genes do not
    z = c.cohort.table.drop_duplicates("case_id").set_index("case_id").loc[ph.index]
    planted = [g for g in sorted(c.cohort.planted_genes)]
    assert min(stats.spearmanr(z[f"{g}_rnaseq"], ph).statistic for g in planted) > 0.8
    assert abs(stats.spearmanr(z["NOISE1_rnaseq"], ph).statistic) < 0.5
    # heavy censoring, and a higher phenotype means more events
    assert 0.5 < cases["censorship"].mean() < 0.9
    # a planted patch is shifted by `contrast` noise sd along the planted direction
    sid = max(c.masks, key=lambda s: c.masks[s].sum())
    bag = read_bag(c.features / f"{sid}.h5")
    proj = bag.features @ planted_direction(spec.dim, spec.feature_seed)
    m = c.masks[sid]
    assert m.sum() >= 3
    assert proj[m].mean() - proj[~m].mean() == pytest.approx(spec.contrast * spec.noise, abs=0.5)
    # deterministic for a seed
    again = make_distill_cohort(spec, tmp_path / "again")
    assert all((again.masks[s] == c.masks[s]).all() for s in c.masks)


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="censoring"):
        DistillCohortSpec(censoring=1.0).validate()
    with pytest.raises(ValueError, match="n_cases"):
        DistillCohortSpec(n_cases=3).validate()


def test_t_interval_and_paired_difference_by_hand():
    m, lo, hi = t_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert np.isnan(t_interval([1.0])[1])
    a = {(0, 0): 0.7, (0, 1): 0.8, (1, 0): 0.6, (1, 1): None}
    b = {(0, 0): 0.5, (0, 1): 0.8, (1, 0): 0.7, (2, 0): 0.9}
    d = paired_difference(a, b)
    assert d.n == 3 and d.a_higher == 1 and d.ties == 1
    assert d.mean == pytest.approx((0.2 + 0.0 - 0.1) / 3)
    assert not d.excludes_zero
    assert paired_difference({i: 1.0 + 0.01 * i for i in range(10)}, {i: 0.0 for i in range(10)}).excludes_zero


def test_mask_auc():
    mask = np.array([True, False, False, True])
    assert mask_auc(np.array([0.9, 0.1, 0.2, 0.8]), mask) == 1.0
    assert mask_auc(np.array([0.1, 0.9, 0.8, 0.2]), mask) == 0.0
    assert mask_auc(np.ones(4), mask) == 0.5
    assert mask_auc(np.ones(4), np.zeros(4, bool)) is None


def test_no_censoring_means_only_the_end_of_follow_up_censors():
    from ghanet_pipeline.demo.cohort import make_cohort

    cases = make_cohort(n_cases=200, seed=0, censor_fraction=0.0, max_follow_up_months=150.0).cases
    censored = cases[cases["censorship"] == 1]
    assert len(censored) < 0.35 * len(cases) and (censored["survival_months"] >= 149.9).all()
    assert 0.5 < make_cohort(n_cases=200, seed=0, censor_fraction=0.7).cases["censorship"].mean() < 0.9


def test_replicate_difference_averages_folds_within_a_seed_first():
    from ghanet_pipeline.demo.distill_experiment import replicate_difference

    rows = [{"arm": arm, "seed": s, "fold": f, "c_test": base + (0.1 * (s + 1) if arm == "a" else 0.0) + 0.01 * f}
            for arm, base in (("a", 0.6), ("b", 0.6)) for s in range(3) for f in range(4)]
    d = replicate_difference(rows, "a", "b")
    assert d["n"] == 3 and d["seed_means"] == pytest.approx([0.1, 0.2, 0.3])
    m, lo, hi = t_interval([0.1, 0.2, 0.3])
    assert (d["mean"], d["lo"], d["hi"]) == pytest.approx((m, lo, hi))
