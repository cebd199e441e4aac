"""Paired comparison of two models scored on the same validation folds: mean and t-interval.

Used by the model comparisons in ``benchmarks/`` (``compare_models.py``, ``distillation.py``) and their
tests. A *pair* is one validation fold of one replicate (e.g. seed x fold): both models were trained on
the same training cases and scored on the same validation cases, so their difference removes the
fold-to-fold spread that dominates small cohorts. The interval is a two-sided Student t-interval over
the pairs; pairs that share a cohort overlap in training cases, so it describes seed/split variability
of the comparison, not the sampling of new patients (unless every replicate draws a new cohort).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t confidence interval of ``values`` (NaN bounds for fewer than 2 values;
    NaN mean for none)."""
    from scipy import stats

    x = np.asarray(list(values), dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - half, m + half


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over the pairs both models scored: ``mean`` with the ``level`` t-interval ``[lo, hi]``;
    ``n`` pairs, ``a_higher`` / ``ties`` counts."""

    mean: float
    lo: float
    hi: float
    n: int
    a_higher: int
    ties: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0."""
        return bool(self.lo > 0 or self.hi < 0)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_difference(a: Mapping[Hashable, float | None], b: Mapping[Hashable, float | None],
                      level: float = 0.95) -> PairedDifference:
    """``a[k] - b[k]`` over the keys (e.g. ``(seed, fold)``) where both values are defined."""
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None
            and np.isfinite(a[k]) and np.isfinite(b[k])]
    diff = [float(a[k]) - float(b[k]) for k in keys]  # type: ignore[arg-type]
    m, lo, hi = t_interval(diff, level)
    return PairedDifference(mean=m, lo=lo, hi=hi, n=len(diff), a_higher=int(sum(d > 0 for d in diff)),
                            ties=int(sum(d == 0 for d in diff)), level=level)
