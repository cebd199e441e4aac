"""c-index equals scikit-survival's; hand-checked cases; log-rank / KM via lifelines."""

from __future__ import annotations

import numpy as np
import pytest

from ghanet_pipeline.core.errors import InputError
from ghanet_pipeline.evaluation.metrics import (
    NoComparablePairsError,
    concordance,
    concordance_index,
    kaplan_meier,
    logrank,
    spearman,
    split_at_threshold,
)


def test_hand_checked_perfect_and_reversed():
    time = [1, 2, 3, 4]
    event = [1, 1, 1, 1]
    assert concordance_index(time, event, [4, 3, 2, 1]) == 1.0
    assert concordance_index(time, event, [1, 2, 3, 4]) == 0.0


def test_hand_checked_ties_and_censoring():
    # pairs (i with event, shorter time): (0,1) (0,2) (0,3): risk 0 vs 1 tie, 0 > 2, 0 > 3 -> 0.5+1+1
    # case 1 censored -> no pair starts at it. case 2 event at t=3 vs case 3 (t=3, censored): comparable,
    # 2 has risk 1 < 3's risk 2 -> discordant. Total (2.5 + 0) / 4.
    time = [1, 2, 3, 3]
    event = [1, 0, 1, 0]
    risk = [5, 5, 1, 2]
    res = concordance(time, event, risk)
    assert res.pairs == 4
    assert res.tied_risk == 1 and res.concordant == 2 and res.discordant == 1 and res.tied_time == 1
    assert res.c_index == pytest.approx(2.5 / 4)


def test_tied_event_times_not_comparable():
    # two deaths at the same time are not comparable: only the pair (0, 2) counts
    res = concordance([2, 2, 5], [1, 1, 0], [1, 9, 0])
    assert res.pairs == 2  # (0,2) and (1,2)
    assert res.c_index == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_equals_scikit_survival_with_ties(seed):
    sksurv_metrics = pytest.importorskip("sksurv.metrics")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    time = rng.integers(1, 15, size=n).astype(float)          # many tied times
    event = rng.random(n) < 0.6
    event[0] = True
    risk = np.round(rng.normal(size=n), 1)                     # many tied risks
    risk[:3] = risk[3]                                         # exact ties
    ours = concordance(time, event.astype(int), risk)
    ref = sksurv_metrics.concordance_index_censored(event, time, risk)
    assert ours.c_index == pytest.approx(ref[0], abs=1e-12)
    assert (ours.concordant, ours.discordant, ours.tied_risk, ours.tied_time) == tuple(int(x) for x in ref[1:])


def test_no_comparable_pairs_is_a_domain_error():
    with pytest.raises(NoComparablePairsError, match="every case is censored"):
        concordance_index([1, 2, 3], [0, 0, 0], [1, 2, 3], what="fold 2 validation")
    with pytest.raises(NoComparablePairsError, match="fold 2 validation"):
        concordance_index([1, 1], [1, 1], [0, 1], what="fold 2 validation")
    with pytest.raises(NoComparablePairsError, match="fewer than two"):
        concordance_index([1], [1], [0])


def test_bad_values_named():
    with pytest.raises(InputError, match="risk value"):
        concordance_index([1, 2], [1, 0], [np.nan, 1])
    with pytest.raises(InputError, match="0/1"):
        concordance_index([1, 2], [2, 0], [0, 1])
    with pytest.raises(InputError, match="same length"):
        concordance_index([1, 2], [1], [0, 1])


def test_logrank_separates_groups_and_km_has_bands():
    rng = np.random.default_rng(0)
    risk = rng.normal(size=200)
    time = rng.exponential(scale=np.exp(-1.5 * risk) * 30)
    event = rng.random(200) < 0.8
    high = split_at_threshold(risk)
    assert high.sum() == 100
    res = logrank(time, event, high)
    assert res.p_value < 1e-4 and res.n_high == 100
    null = logrank(time, event, rng.random(200) < 0.5)
    assert null.p_value > res.p_value
    km = kaplan_meier(time, event)
    ci = km.confidence_interval_survival_function_
    assert ci.shape[1] == 2 and (ci.iloc[:, 0] <= ci.iloc[:, 1] + 1e-12).all()
    with pytest.raises(InputError, match="one risk group"):
        logrank(time, event, np.ones(200, bool))


def test_spearman_undefined_is_nan():
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert np.isnan(spearman([1], [1]))
