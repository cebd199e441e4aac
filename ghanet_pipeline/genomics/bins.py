"""Discrete survival bins (months): quantiles of event times, outer edges widened to the cohort range.

Same scheme as MCAT/G-HANet: the inner edges are the 25/50/75 % quantiles of the uncensored
(event) times; the first and last edges are the minimum and maximum survival time of the whole
cohort, so every case falls into a bin. Bin i holds times in [edge_i, edge_{i+1}); the last bin also
holds the maximum; times outside the edges are clipped into the outer bins.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError
from ..core.labels import event_from_censorship


def fit_bin_edges(times_months: np.ndarray, censorship: np.ndarray, cohort_min: float, cohort_max: float,
                  n_bins: int = 4) -> np.ndarray:
    """Edges (n_bins + 1, months): event-time quantiles with outer edges ``cohort_min`` / ``cohort_max``.

    Raises InputError when there are fewer than 2 events to fit on.
    """
    times = np.asarray(times_months, dtype=float)
    events = times[event_from_censorship(censorship) == 1]
    if len(events) < 2:
        raise InputError(f"only {len(events)} event(s) (censorship 0) to fit survival bins on; need at least 2 "
                         f"(check the censorship coding: 1 = censored, 0 = death)")
    edges = np.quantile(events, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0] = min(float(cohort_min), edges[0])
    edges[-1] = max(float(cohort_max), edges[-1])
    return np.maximum.accumulate(edges)


def assign_bins(times_months: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index (0 .. len(edges) - 2) of each time; bin i = [edge_i, edge_{i+1})."""
    edges = np.asarray(edges, dtype=float)
    n_bins = len(edges) - 1
    idx = np.searchsorted(edges[1:-1], np.asarray(times_months, dtype=float), side="right")
    return np.clip(idx, 0, n_bins - 1).astype(int)
