"""Per-fold differential selection between high- and low-risk training patients.

Groups (training cases only, survival bins 0..3): high-risk = an event (death) in bins 0-1;
low-risk = bins 2-3, censored or not; censored cases in bins 0-1 are left out (their risk is unknown).
Protocol ``ghanet`` counts each training case once; protocol ``official`` counts the cases drawn by one
pass of the class-balanced, with-replacement training loader (``protocols.loader_risk_groups``).

Methods
- ``deseq2``: pydeseq2 on raw integer counts, design ``~group`` (contrast high vs low), keep
  ``padj < padj_max`` and ``|log2FoldChange| >= lfc_min`` (defaults 0.05 and 1.0, i.e. two-fold).
- ``ttest``: Welch's t-test per feature (vectorised; equals ``scipy.stats.ttest_ind(equal_var=False)``),
  keep ``p < p_max`` (0.05, uncorrected: the G-HANet reference protocol). Features constant over both
  groups are dropped.
- ``none``: keep every feature.
- ``auto``: ``deseq2`` when every value is a non-negative integer (and not only 0/1), else ``ttest``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ..core.errors import InputError
from ..core.labels import event_from_censorship

log = logging.getLogger(__name__)

MIN_GROUP = 2


@dataclass
class Selection:
    """Result of one selection: the kept features and the per-feature statistics.

    ``stats``: indexed by feature; columns depend on the method (``t``, ``pvalue`` for ttest;
    ``log2FoldChange``, ``pvalue``, ``padj`` for deseq2).
    """

    method: str
    selected: list[str]
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)
    n_high: int = 0
    n_low: int = 0


def risk_groups(bins: np.ndarray, censorship: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (high, low): high = event in bins 0-1; low = bins 2-3 (any censorship)."""
    bins = np.asarray(bins)
    event = event_from_censorship(censorship) == 1
    return (bins <= 1) & event, bins >= 2


def welch_ttest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise Welch t statistic and two-sided p-value for samples ``a`` (n1, F) vs ``b`` (n2, F):
    ``scipy.stats.ttest_ind(a, b, axis=0, equal_var=False)`` on the whole matrix in one call."""
    with warnings.catch_warnings():  # constant features give NaN (never selected): not worth a warning
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        res = stats.ttest_ind(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), axis=0,
                              equal_var=False)
    return np.asarray(res.statistic, dtype=np.float64), np.asarray(res.pvalue, dtype=np.float64)


def _as_index(groups: np.ndarray) -> np.ndarray:
    """Row indices of a group given as a boolean mask or as indices (repeats allowed: resampled groups)."""
    g = np.asarray(groups)
    return np.flatnonzero(g) if g.dtype == bool else g.astype(np.int64)


def _check_groups(high: np.ndarray, low: np.ndarray, fold_label: str) -> None:
    n_high, n_low = len(_as_index(high)), len(_as_index(low))
    if n_high < MIN_GROUP or n_low < MIN_GROUP:
        raise InputError(f"{fold_label}: only {n_high} high-risk (event in survival bins 0-1) and "
                         f"{n_low} low-risk (bins 2-3) training cases; each group needs at least "
                         f"{MIN_GROUP} for differential selection. Use fewer folds, more cases, or "
                         f"--de-method none (keep every gene)")


def ttest_select(x: pd.DataFrame, high: np.ndarray, low: np.ndarray, p_max: float = 0.05,
                 fold_label: str = "fold") -> Selection:
    """Welch t-test selection on ``x`` (training cases x features, no NaN).

    ``high`` / ``low``: boolean masks over the rows, or row indices (a row may repeat: the official
    protocol's groups are drawn with replacement, and a repeated row counts as that many samples).
    """
    _check_groups(high, low, fold_label)
    hi, lo = _as_index(high), _as_index(low)
    arr = x.to_numpy(dtype=np.float64)
    t, p = welch_ttest(arr[hi], arr[lo])
    both = arr[np.concatenate([hi, lo])]
    constant = np.all(both == both[0], axis=0)
    p = np.where(constant, np.nan, p)
    keep = np.isfinite(p) & (p < p_max)
    stats = pd.DataFrame({"t": t, "pvalue": p, "constant": constant}, index=x.columns)
    return Selection("ttest", [c for c, k in zip(x.columns, keep, strict=False) if k], stats, len(hi), len(lo))


def deseq2_select(counts: pd.DataFrame, high: np.ndarray, low: np.ndarray, padj_max: float = 0.05,
                  lfc_min: float = 1.0, n_cpus: int = 1, fold_label: str = "fold") -> Selection:
    """pydeseq2 (design ``~group``, contrast high vs low) on raw counts (training cases x genes).

    Keeps genes with ``padj < padj_max`` and ``|log2FoldChange| >= lfc_min``. Genes that are zero in
    every grouped case are not tested. pydeseq2's console output and warnings are silenced.
    """
    _check_groups(high, low, fold_label)
    from pydeseq2.dds import DeseqDataSet  # (heavy import, only when used)
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    grouped = high | low
    sub = counts.loc[grouped]
    arr = sub.to_numpy()
    if not (np.isfinite(arr).all() and (arr >= 0).all() and (np.floor(arr) == arr).all()):
        raise InputError(f"{fold_label}: DESeq2 needs raw non-negative integer counts")
    nonzero = arr.sum(axis=0) > 0
    data = pd.DataFrame(arr[:, nonzero].astype(np.int64), index=[f"s{i}" for i in range(len(sub))],
                        columns=[str(c) for c in sub.columns[nonzero]])
    group = np.where(high[grouped], "high", "low")
    meta = pd.DataFrame({"group": pd.Categorical(group, categories=["low", "high"])}, index=data.index)
    inference = DefaultInference(n_cpus=max(1, int(n_cpus)))
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            _one_blas_thread():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=data, metadata=meta, design="~group", inference=inference, quiet=True)
        dds.deseq2()
        ds = DeseqStats(dds, contrast=["group", "high", "low"], inference=inference, quiet=True)
        ds.summary()
    res = ds.results_df.reindex([str(c) for c in counts.columns])
    res.index = counts.columns
    padj = res["padj"].to_numpy(dtype=float)
    lfc = res["log2FoldChange"].to_numpy(dtype=float)
    keep = np.isfinite(padj) & (padj < padj_max) & np.isfinite(lfc) & (np.abs(lfc) >= lfc_min)
    stats = res[["baseMean", "log2FoldChange", "pvalue", "padj"]].copy()
    return Selection("deseq2", [c for c, k in zip(counts.columns, keep, strict=False) if k], stats,
                     int(high.sum()), int(low.sum()))


@contextlib.contextmanager
def _one_blas_thread():
    """pydeseq2 fits thousands of tiny per-gene GLMs: multi-threaded BLAS only adds overhead there, so
    BLAS runs single-threaded; parallelism comes from n_cpus."""
    try:
        from threadpoolctl import threadpool_limits  # (installed with scikit-learn/pydeseq2)
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def choose_method(requested: str, features: pd.DataFrame) -> tuple[str, str]:
    """Resolve ``auto``: (method, reason). ``deseq2`` only on non-negative integers that are not only 0/1."""
    if requested != "auto":
        return requested, "requested"
    x = features.to_numpy()
    finite = np.isfinite(x)
    integer = bool(finite.all() and (x >= 0).all() and (np.floor(x) == x).all())
    if integer and x.size and x.max() > 1:
        return "deseq2", "every value is a non-negative integer (raw counts)"
    if integer:
        return "ttest", "values are only 0/1 (binary, e.g. mutations): not counts"
    if not finite.all():
        return "ttest", "values contain missing entries (imputed per fold): not raw counts"
    return "ttest", "values are not all non-negative integers (already normalised)"
