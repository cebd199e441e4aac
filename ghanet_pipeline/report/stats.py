"""Numbers the report adds to a run's ``metrics.json``: 95 % intervals of the c-index.

The interval is a percentile bootstrap over cases (resampled with replacement, seeded): the c-index of
each resample is computed with :func:`ghanet_pipeline.evaluation.metrics.concordance` (the run's own
definition); resamples without a comparable pair are dropped and counted. Per fold the resampling is
within the fold's validation cases; the pooled interval resamples all cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..evaluation.metrics import NoComparablePairsError, concordance

#: bootstrap resamples per interval
N_BOOT = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A c-index and its bootstrap interval; ``lo``/``hi`` None when fewer than half the resamples had
    a comparable pair. ``n_boot`` resamples were drawn, ``n_used`` had one."""

    c_index: float | None
    lo: float | None
    hi: float | None
    n_cases: int
    n_events: int
    n_boot: int
    n_used: int


def cindex_interval(time: Sequence[float], event: Sequence[int], risk: Sequence[float], n_boot: int = N_BOOT,
                    level: float = LEVEL, seed: int = 0) -> Interval:
    """C-index of ``risk`` (higher = worse) against ``time`` (months) / ``event`` (1 = death) and its
    ``level`` percentile-bootstrap interval over ``n_boot`` case resamples (``seed``)."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.int64)
    r = np.asarray(risk, dtype=np.float64)
    n, n_ev = len(t), int(e.sum())
    try:
        point: float | None = concordance(t, e, r).c_index
    except NoComparablePairsError:
        return Interval(None, None, None, n, n_ev, n_boot, 0)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            values.append(concordance(t[idx], e[idx], r[idx]).c_index)
        except NoComparablePairsError:
            continue
    if len(values) < max(1, n_boot // 2):
        return Interval(point, None, None, n, n_ev, n_boot, len(values))
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return Interval(point, float(lo), float(hi), n, n_ev, n_boot, len(values))
