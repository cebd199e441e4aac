"""Metrics and plots for any predictions table (ours or another tool's).

``evaluate_predictions`` reads case id, risk, time (months) and censorship (or event) columns and an
optional fold column, and writes ``metrics.json`` + ``km.png`` into ``out``:

- ``c_index_per_fold`` ({fold: c-index or null when the fold has no comparable pairs}),
  ``c_index_mean`` / ``c_index_std`` (over the folds with a defined c-index; std with ddof=0),
  ``c_index_pooled`` (all rows together; risks of different fold models are not calibrated against each
  other, so prefer the per-fold mean), ``logrank_p`` (low vs high risk).
- Risk groups: a case is "high risk" when its risk is above its fold's threshold: the training-risk
  median of that fold's model when ``thresholds`` are given (what ``train`` does: no peeking at the
  validation fold), otherwise the median of the fold's own risks (the pooled median without folds).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.files import write_json_atomic
from ..core.labels import event_from_censorship
from ..core.tables import read_table_file
from .metrics import NoComparablePairsError, concordance_index, logrank, split_at_threshold

log = logging.getLogger(__name__)


@dataclass
class Columns:
    """Column names of a predictions table. ``event`` wins over ``censorship`` when given."""

    case: str = "case_id"
    risk: str = "risk"
    time: str = "survival_months"
    censorship: str = "censorship"
    event: str | None = None
    fold: str | None = "fold"  # None: no folds (pooled only); a missing default "fold" column is fine


def _status_column(cols: Columns, have: list[str]) -> tuple[str | None, str]:
    """(column, kind) of the survival status: an explicit event column, else censorship, else ``event``."""
    if cols.event is not None:
        return cols.event, "event"
    if cols.censorship in have:
        return cols.censorship, "censorship"
    return ("event" if "event" in have else None), "event"


def _numeric(table: Any, col: str, src: str) -> np.ndarray:
    """Column ``col`` as float; missing or non-numeric cells are an error naming the file lines."""
    import pandas as pd

    vals = pd.to_numeric(table[col], errors="coerce")
    bad = vals.isna() | ~np.isfinite(vals.astype(float))
    if bad.any():
        rows = (np.flatnonzero(bad.to_numpy())[:5] + 2).tolist()  # +2: header line, 1-based
        raise InputError(f"{src}: column {col!r} has {int(bad.sum())} missing/non-numeric value(s) "
                         f"(file lines {rows}); fix or drop those rows")
    return vals.astype(float).to_numpy()


def _case_ids(table: Any, col: str, src: str) -> Any:
    case_ids = table[col].astype(str).str.strip()
    empty = (case_ids == "") | table[col].isna().to_numpy()
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy())[:5] + 2).tolist()  # +2: header line, 1-based
        raise InputError(f"{src}: column {col!r} has {int(empty.sum())} empty case id(s) (file lines "
                         f"{rows}); fill them or drop those rows")
    return case_ids


def read_predictions(table: Any, cols: Columns) -> tuple[Any, dict[str, str]]:
    """Validate a predictions table (DataFrame or CSV path) -> DataFrame with columns case_id, risk,
    time, event (0/1), fold (or absent), plus a dict saying which source column was read for what."""
    import pandas as pd

    src = "table" if isinstance(table, pd.DataFrame) else str(table)
    if not isinstance(table, pd.DataFrame):
        table = read_table_file(table)
    if len(table) == 0:
        raise InputError(f"{src}: the predictions table has no rows")
    have = list(table.columns)
    event_col, event_kind = _status_column(cols, have)
    missing = [c for c in (cols.case, cols.risk, cols.time, event_col or cols.censorship) if c not in have]
    if missing:
        raise InputError(f"{src}: missing column(s) {missing}; found {have}. Name them with --case-col, "
                         f"--risk-col, --time-col, --censorship-col or --event-col")
    fold_col = cols.fold if cols.fold and cols.fold in have else None
    if cols.fold and cols.fold != "fold" and fold_col is None:
        raise InputError(f"{src}: fold column {cols.fold!r} not found; found {have}")
    df = pd.DataFrame({"case_id": _case_ids(table, cols.case, src), "risk": _numeric(table, cols.risk, src),
                       "time": _numeric(table, cols.time, src)})
    status = _numeric(table, event_col, src)
    if not np.isin(status, [0.0, 1.0]).all():
        raise InputError(f"{src}: column {event_col!r} must be 0/1, got {sorted(set(status.tolist()))[:6]}")
    df["event"] = status.astype(int) if event_kind == "event" else event_from_censorship(status)
    if (df["time"] < 0).any():
        raise InputError(f"{src}: column {cols.time!r} has negative survival times")
    if fold_col is not None:
        df["fold"] = table[fold_col].astype(str).to_numpy()
    dup = df.duplicated(["fold", "case_id"] if fold_col else ["case_id"])
    if dup.any():
        raise InputError(f"{src}: case(s) {df.loc[dup, 'case_id'].unique()[:5].tolist()} appear more than once"
                         f"{' in the same fold' if fold_col else ''}; keep one row per case"
                         f"{' and fold' if fold_col else ' or give a fold column'}")
    read = {"case_id": cols.case, "risk": cols.risk, "time": cols.time,
            event_kind: event_col, "fold": fold_col or "(none: pooled)"}
    return df, read


def _fold_key(value: Any) -> str:
    return str(value)


@dataclass
class FoldSplit:
    """Per-fold c-index (None where undefined), the high-risk mask over all rows and the threshold used
    per fold (risk above it = high)."""

    c_index: dict[str, float | None]
    high: np.ndarray
    thresholds: dict[str, float]
    warnings: list[str]


def _fold_groups(df: Any) -> list[tuple[Any, Any]]:
    """(fold, rows) in numeric fold order (``all`` when the table has no folds)."""
    if "fold" not in df.columns:
        return [("all", df)]
    groups = list(df.groupby("fold", sort=False))
    groups.sort(key=lambda kv: (0, int(kv[0])) if str(kv[0]).lstrip("-").isdigit() else (1, str(kv[0])))
    return groups


def split_folds(df: Any, thresholds: Mapping[Any, float] | None) -> FoldSplit:
    """C-index per fold and the risk groups: above the fold's given threshold, else above its median risk."""
    has_folds = "fold" in df.columns
    res = FoldSplit({}, np.zeros(len(df), dtype=bool), {}, [])
    for fold, sub in _fold_groups(df):
        key = _fold_key(fold)
        if has_folds:
            try:
                res.c_index[key] = concordance_index(sub["time"], sub["event"], sub["risk"],
                                                     what=f"fold {key} ({len(sub)} cases)")
            except NoComparablePairsError as exc:
                res.c_index[key] = None
                res.warnings.append(str(exc))
                log.warning("%s", exc)
        thr = None if thresholds is None else thresholds.get(fold, thresholds.get(key))
        res.thresholds[key] = float(np.median(sub["risk"])) if thr is None else float(thr)
        res.high[df.index.get_indexer(sub.index)] = split_at_threshold(sub["risk"], res.thresholds[key])
    return res


def _pooled_c_index(df: Any, split: FoldSplit) -> float | None:
    """The pooled c-index; raises when no fold (or, without folds, the pool) has comparable pairs."""
    try:
        pooled: float | None = concordance_index(df["time"], df["event"], df["risk"], what="all cases pooled")
    except NoComparablePairsError as exc:
        pooled = None
        split.warnings.append(str(exc))
    if "fold" in df.columns and not any(v is not None for v in split.c_index.values()):
        raise NoComparablePairsError("no fold has comparable pairs, the c-index is undefined everywhere: "
                                     + "; ".join(split.warnings))
    if "fold" not in df.columns and pooled is None:
        raise NoComparablePairsError(split.warnings[-1])
    return pooled


def evaluate_predictions(table: Any, out: Path | str, cols: Columns | None = None,
                         thresholds: Mapping[Any, float] | None = None, optimistic: bool = False,
                         extra: Mapping[str, Any] | None = None, plot: bool = True,
                         title: str = "Kaplan-Meier by predicted risk") -> dict[str, Any]:
    """Compute c-index (per fold, mean +- std, pooled), log-rank p and write ``out/metrics.json`` and
    ``out/km.png``. ``optimistic`` labels the figures and metrics (epoch selected on validation).
    ``extra`` is merged into metrics.json (e.g. per-family Spearman from training). Returns the metrics."""
    df, read = read_predictions(table, cols or Columns())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    has_folds = "fold" in df.columns
    split = split_folds(df, thresholds)
    pooled = _pooled_c_index(df, split)
    defined = [v for v in split.c_index.values() if v is not None]
    try:
        lr = logrank(df["time"], df["event"], split.high)
        logrank_p: float | None = lr.p_value
        n_high, n_low = lr.n_high, lr.n_low
    except InputError as exc:
        logrank_p, n_high, n_low = None, int(split.high.sum()), int((~split.high).sum())
        split.warnings.append(str(exc))
    metrics: dict[str, Any] = {
        "c_index_per_fold": split.c_index,
        "c_index_mean": float(np.mean(defined)) if defined else None,
        "c_index_std": float(np.std(defined)) if defined else None,
        "c_index_pooled": pooled, "logrank_p": logrank_p, "n_cases": int(len(df)),
        "n_events": int(df["event"].sum()), "n_high_risk": n_high, "n_low_risk": n_low,
        "risk_split": ("per-fold training-risk median" if thresholds is not None else
                       "per-fold median of the fold's risks" if has_folds else "median risk (pooled)"),
        "risk_thresholds": split.thresholds, "c_index_std_ddof": 0, "columns_read": read,
        "optimistic": bool(optimistic), "warnings": split.warnings,
    }
    if optimistic:
        metrics["note"] = ("optimistic: the reported epoch was chosen on the validation fold "
                           "(authors' protocol); use --select final for an unbiased estimate")
    metrics.update(extra or {})
    if plot:
        from .plots import plot_km

        note = "OPTIMISTIC (epoch selected on the validation fold)" if optimistic else ""
        plot_km(df["time"], df["event"], split.high, out / "km.png", logrank_p=logrank_p, title=title, note=note)
        metrics["plots"] = {"km": "km.png"}
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
