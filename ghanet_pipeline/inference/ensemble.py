"""Ensemble arithmetic over the fold models of a run (pure numpy): mean risk and spread, the risk group
against the folds' training medians, the mean survival curve. The rules are described in
`inference.predict`'s module docstring."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RiskSummary:
    """Ensemble risk: mean over fold models, sample std (ddof=1, None for one model), min, max."""

    mean: float
    std: float | None
    min: float
    max: float
    n: int


def summarize_risks(risks: Sequence[float]) -> RiskSummary:
    """Mean, spread (sample std, min, max) of the fold models' risks."""
    r = np.asarray(risks, dtype=np.float64)
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise ValueError(f"need at least one finite risk, got {list(r)}")
    std = float(r.std(ddof=1)) if r.size > 1 else None
    return RiskSummary(mean=float(r.mean()), std=std, min=float(r.min()), max=float(r.max()), n=int(r.size))


@dataclass(frozen=True)
class GroupDecision:
    """High/low risk group of a case (see the module doc for the rule).

    ``threshold`` = mean of the fold models' training medians; ``margin`` = mean risk - threshold
    (> 0 means high); ``folds_high`` = how many single models put the case above their own median.
    """

    group: str
    threshold: float
    margin: float
    folds_high: int
    n_folds: int


def risk_group(risks: Sequence[float], train_medians: Sequence[float]) -> GroupDecision:
    """``high`` when ``mean(risks) > mean(train_medians)`` (strictly), else ``low``."""
    r = np.asarray(risks, dtype=np.float64)
    m = np.asarray(train_medians, dtype=np.float64)
    if r.shape != m.shape or r.size == 0:
        raise ValueError(f"need one training median per risk, got {r.size} risks and {m.size} medians")
    threshold = float(m.mean())
    mean_risk = float(r.mean())
    return GroupDecision(group="high" if mean_risk > threshold else "low", threshold=threshold,
                         margin=mean_risk - threshold, folds_high=int((r > m).sum()), n_folds=int(r.size))


@dataclass(frozen=True)
class SurvivalCurve:
    """Ensemble survival: ``S[j]`` = P(survive past ``edges_months[j + 1]``); ``S_std`` over models."""

    edges_months: list[float]
    S: list[float]
    S_std: list[float] | None
    edges_differ: bool


def ensemble_survival(S: np.ndarray, edges_months: np.ndarray, atol_months: float = 1e-6) -> SurvivalCurve:
    """Average the fold models' survival curves.

    ``S`` (K, B): each model's survival past the end of each bin; ``edges_months`` (K, B + 1): each
    model's bin edges. Same edges: plain mean per bin. Different edges: each curve (knots
    ``(e_0, 1)`` and ``(e_{j+1}, S_j)``) is linearly interpolated at the mean edges first.
    """
    S = np.atleast_2d(np.asarray(S, dtype=np.float64))
    E = np.atleast_2d(np.asarray(edges_months, dtype=np.float64))
    if E.shape != (S.shape[0], S.shape[1] + 1):
        raise ValueError(f"edges shape {E.shape} does not fit survival shape {S.shape} (need K x (B+1))")
    mean_edges = E.mean(axis=0)
    differ = bool(np.any(np.abs(E - E[0]) > atol_months))
    if differ:
        aligned = np.empty_like(S)
        for k in range(S.shape[0]):
            knots_t = E[k]
            knots_s = np.concatenate([[1.0], S[k]])
            aligned[k] = np.interp(mean_edges[1:], knots_t, knots_s)
        S = aligned
    std = S.std(axis=0, ddof=1).tolist() if S.shape[0] > 1 else None
    return SurvivalCurve(edges_months=mean_edges.tolist(), S=S.mean(axis=0).tolist(), S_std=std, edges_differ=differ)
