"""Survival metrics: Harrell's concordance index, Kaplan-Meier curves and the log-rank test.

Conventions (docs/architecture.md, "Words and units"): ``time`` in months, ``event`` = 1 for a death and
0 for a censored case (event = 1 - censorship), ``risk`` higher = worse prognosis. The functions
expect RISK SCORES, not survival probabilities or times (negate those first).

The c-index is exactly scikit-survival's ``concordance_index_censored``: a pair is comparable when
the case with the shorter time had an event (an event and a censoring at the same time are
comparable, two events at the same time are not); tied risks (``|r_i - r_j| <= tied_tol``) count 0.5.
Kaplan-Meier and the log-rank test come from lifelines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import InputError


class NoComparablePairsError(InputError):
    """The c-index is undefined: no pair of cases is comparable (e.g. every case is censored)."""


@dataclass(frozen=True)
class Concordance:
    """Result of :func:`concordance`: the index and the pair counts it was computed from."""

    c_index: float
    concordant: int
    discordant: int
    tied_risk: int
    tied_time: int  # comparable pairs with an event and a censoring at the same time

    @property
    def pairs(self) -> int:
        return self.concordant + self.discordant + self.tied_risk


def _as_arrays(time: Sequence[float], event: Sequence[Any], risk: Sequence[float],
               what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e_raw = np.asarray(event).reshape(-1)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    if not (len(t) == len(e_raw) == len(r)):
        raise InputError(f"{what}: time ({len(t)}), event ({len(e_raw)}) and risk ({len(r)}) "
                         f"must have the same length")
    for name, arr in (("time", t), ("risk", r)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(f"{what}: {int(bad.sum())} {name} value(s) are NaN or infinite "
                             f"(first at position {int(np.flatnonzero(bad)[0])}); remove those cases")
    if e_raw.dtype == bool:
        e = e_raw
    else:
        e_num = np.asarray(e_raw, dtype=np.float64)
        if not np.isin(e_num, (0.0, 1.0)).all():
            raise InputError(f"{what}: event indicator must be 0/1 (1 = death), got values "
                             f"{sorted(set(np.unique(e_num).tolist()) - {0.0, 1.0})[:5]}")
        e = e_num.astype(bool)
    return t, e, r


def concordance(time: Sequence[float], event: Sequence[Any], risk: Sequence[float],
                tied_tol: float = 1e-8, what: str = "c-index") -> Concordance:
    """Harrell's c-index of ``risk`` against right-censored ``time``/``event``.

    Identical to ``sksurv.metrics.concordance_index_censored(event.astype(bool), time, risk)``.
    Raises :class:`NoComparablePairsError` when there is no comparable pair (fewer than two cases,
    all censored, or only tied event times); ``what`` names the data set in error messages.
    Memory is O(block * n); fine for cohorts of tens of thousands of cases.
    """
    t, e, r = _as_arrays(time, event, risk, what)
    n = len(t)
    concordant = discordant = tied_risk = tied_time = 0
    ev_idx = np.flatnonzero(e)
    block = max(1, 4_000_000 // max(n, 1))
    for start in range(0, len(ev_idx), block):
        idx = ev_idx[start:start + block]
        ti, ri = t[idx, None], r[idx, None]
        same_time = t[None, :] == ti
        comparable = (t[None, :] > ti) | (same_time & ~e[None, :])
        ties = comparable & (np.abs(r[None, :] - ri) <= tied_tol)
        con = comparable & ~ties & (r[None, :] < ri)
        n_comp = int(comparable.sum())
        n_ties = int(ties.sum())
        n_con = int(con.sum())
        concordant += n_con
        tied_risk += n_ties
        discordant += n_comp - n_con - n_ties
        tied_time += int((same_time & ~e[None, :]).sum())
    pairs = concordant + discordant + tied_risk
    if pairs == 0:
        n_events = int(e.sum())
        why = ("fewer than two cases" if n < 2 else "every case is censored" if n_events == 0
               else "no case outlives an event (all event times tied or last)")
        raise NoComparablePairsError(f"{what}: no comparable pairs among {n} cases ({n_events} events): {why}; "
                                     f"the c-index is undefined — use more cases or a fold with events")
    return Concordance(c_index=(concordant + 0.5 * tied_risk) / pairs, concordant=concordant,
                       discordant=discordant, tied_risk=tied_risk, tied_time=tied_time)


def concordance_index(time: Sequence[float], event: Sequence[Any], risk: Sequence[float],
                      tied_tol: float = 1e-8, what: str = "c-index") -> float:
    """The c-index alone (see :func:`concordance`)."""
    return concordance(time, event, risk, tied_tol=tied_tol, what=what).c_index


def split_at_threshold(risk: Sequence[float], threshold: float | None = None) -> np.ndarray:
    """Boolean "high risk" mask: ``risk > threshold`` (default: the median of ``risk``)."""
    r = np.asarray(risk, dtype=np.float64)
    thr = float(np.median(r)) if threshold is None else float(threshold)
    return r > thr


@dataclass(frozen=True)
class LogRank:
    """Two-group log-rank test result (lifelines)."""

    p_value: float
    statistic: float
    n_low: int
    n_high: int


def logrank(time: Sequence[float], event: Sequence[Any], high: Sequence[bool]) -> LogRank:
    """Log-rank test between ``high`` and not-``high`` cases (lifelines ``logrank_test``).

    Raises :class:`InputError` when a group is empty (nothing to compare).
    """
    from lifelines.statistics import logrank_test

    t, e, _ = _as_arrays(time, event, np.zeros(len(np.asarray(time).reshape(-1))), "log-rank")
    h = np.asarray(high, dtype=bool).reshape(-1)
    if h.all() or (~h).all():
        raise InputError(f"log-rank: all {len(h)} cases fall in one risk group; nothing to compare "
                         f"(risks are probably all equal)")
    res = logrank_test(t[h], t[~h], event_observed_A=e[h], event_observed_B=e[~h])
    return LogRank(p_value=float(res.p_value), statistic=float(res.test_statistic),
                   n_low=int((~h).sum()), n_high=int(h.sum()))


def kaplan_meier(time: Sequence[float], event: Sequence[Any], label: str = "KM", alpha: float = 0.05):
    """Fitted lifelines ``KaplanMeierFitter`` (confidence bands at level ``1 - alpha``)."""
    from lifelines import KaplanMeierFitter

    t, e, _ = _as_arrays(time, event, np.zeros(len(np.asarray(time).reshape(-1))), "Kaplan-Meier")
    return KaplanMeierFitter(alpha=alpha).fit(t, event_observed=e, label=label)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation, NaN when undefined (fewer than 2 values or a constant vector)."""
    from scipy.stats import spearmanr

    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if len(x) < 2 or len(x) != len(y) or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)
