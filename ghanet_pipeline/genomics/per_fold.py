"""One fold of ``preprocess-genomics``: survival bins, risk groups, differential selection, scaled gene
targets and the fold's files (``targets.h5`` last, carrying the run's fingerprint digest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.files import atomic_path, write_json_atomic
from ..core.runs import ItemResult
from ..protocols.released import loader_risk_groups
from .bins import assign_bins, fit_bin_edges
from .config import GenomicsConfig
from .families import FamilyMatch
from .folds import Fold
from .selection import Selection, deseq2_select, risk_groups, ttest_select
from .tables import GenomicsData
from .targets import fit_scaler, impute_train_mean, size_factors, write_targets


def fold_metrics(selected: dict[str, list[str]], matches: list[FamilyMatch]) -> dict:
    return {"selected": sum(len(v) for v in selected.values()),
            "of": sum(len(m.features) for m in matches),
            "empty families": sum(1 for m in matches if not selected.get(m.name))}


def fold_bin_edges(clinical: pd.DataFrame, train_ids: list[str], bins_from: str, n_bins: int = 4) -> np.ndarray:
    """Survival-bin edges (months) of one fold: event-time quantiles of the fold's training cases
    (``bins_from="train"``) or of the whole cohort (``"cohort"``); outer edges = the cohort's min/max time.

    ``clinical``: indexed by case_id with survival_months, censorship. Raises InputError (from
    ``fit_bin_edges``) when fewer than 2 events are there to fit on.
    """
    cohort_t = clinical["survival_months"].to_numpy(float)
    src = clinical.loc[list(train_ids)] if bins_from == "train" else clinical
    return fit_bin_edges(src["survival_months"].to_numpy(float), src["censorship"].to_numpy(int),
                         cohort_t.min(), cohort_t.max(), n_bins)


def fold_group_sizes(clinical: pd.DataFrame, folds: list[Fold], bins_from: str = "train",
                     n_bins: int = 4) -> list[tuple[int, int]]:
    """(high-risk, low-risk) training cases of each fold, counted as the differential selection counts
    them with t-test groups ``cases`` (each training case once; protocol ghanet): high = an event in
    bins 0-1, low = bins 2-3. Each group needs ``selection.MIN_GROUP`` cases. A fold whose training cases
    hold fewer than 2 events (no bins can be fitted) counts as (0, 0) with ``bins_from="train"``."""
    sizes = []
    for train_ids, _ in folds:
        train = clinical.loc[list(train_ids)]
        try:
            edges = fold_bin_edges(clinical, list(train_ids), bins_from, n_bins)
        except InputError:
            sizes.append((0, 0))
            continue
        high, low = risk_groups(assign_bins(train["survival_months"].to_numpy(float), edges),
                                train["censorship"].to_numpy(int))
        sizes.append((int(high.sum()), int(low.sum())))
    return sizes


@dataclass
class _FoldLabels:
    """A fold's cases (training first) with survival, censorship, bins and the fitted bin edges."""

    ids: list[str]
    train_ids: list[str]
    is_train: np.ndarray
    times: np.ndarray
    cens: np.ndarray
    edges: np.ndarray
    bins: np.ndarray

    @classmethod
    def of(cls, fold: Fold, data: GenomicsData, cfg: GenomicsConfig) -> _FoldLabels:
        train_ids, val_ids = list(fold[0]), list(fold[1])
        ids = train_ids + val_ids
        clin = data.clinical.loc[ids]
        times = clin["survival_months"].to_numpy(float)
        edges = fold_bin_edges(data.clinical, train_ids, cfg.bins_from, cfg.n_bins)
        return cls(ids, train_ids, np.arange(len(ids)) < len(train_ids), times, clin["censorship"].to_numpy(int),
                   edges, assign_bins(times, edges))


def _target_values(lab: _FoldLabels, data: GenomicsData, x_all: pd.DataFrame
                   ) -> tuple[pd.DataFrame, pd.DataFrame, dict, int]:
    """(raw features, values the targets are made from, normalisation record, imputed count) of a fold:
    counts -> size factors (training reference, all genes) -> log1p; other values as they are."""
    x, n_imputed = impute_train_mean(x_all.loc[lab.ids], lab.train_ids, integer=(data.kind == "counts"))
    zscore = "zscore (train mean, population std; std < 1e-8 -> 1)"
    if data.kind != "counts":
        return x, x.astype(np.float64), {"method": zscore}, n_imputed
    full, _ = impute_train_mean(data.features.loc[lab.ids], lab.train_ids, integer=True)
    sf, _log_geo, sf_note = size_factors(full.to_numpy(), lab.is_train)
    values = pd.DataFrame(np.log1p(x.to_numpy(dtype=np.float64) / sf[:, None]), index=x.index, columns=x.columns)
    norm = {"method": f"size factors (median of ratios, training reference) -> log1p(count / sf) -> {zscore}",
            "size_factor_note": sf_note, "size_factors": {c: float(s) for c, s in zip(lab.ids, sf, strict=False)}}
    return x, values, norm, n_imputed


def _select(k: int, lab: _FoldLabels, x: pd.DataFrame, x_t: pd.DataFrame, data: GenomicsData, method: str,
            cfg: GenomicsConfig) -> tuple[Selection, pd.DataFrame]:
    """The fold's differential selection on its training cases, and the risk-group table it used."""
    label = f"fold {k}"
    bins, cens = lab.bins[lab.is_train], lab.cens[lab.is_train]
    high, low = risk_groups(bins, cens)
    groups = _group_table(lab.train_ids, high, low)
    if method == "ttest":
        if cfg.ttest_groups == "loader":
            high, low, groups = _loader_groups(lab.train_ids, bins, cens, data, cfg.seed)
        return ttest_select(x_t.loc[lab.train_ids], high, low, cfg.pvalue, label), groups
    if method == "deseq2":
        return deseq2_select(x.loc[lab.train_ids], high, low, cfg.padj, cfg.lfc, cfg.n_cpus, label), groups
    return Selection("none", list(x.columns), n_high=int(high.sum()), n_low=int(low.sum())), groups


def _write_fold(fdir: Path, k: int, lab: _FoldLabels, fold: Fold, selected: dict[str, list[str]],
                scaler_doc: dict, groups: pd.DataFrame, sel: Selection, matrices: list[np.ndarray],
                family_names: list[str], method: str, cfg: GenomicsConfig, digest: str) -> None:
    """A fold's files; ``targets.h5`` (complete flag, fingerprint digest) is written last."""
    fdir.mkdir(parents=True, exist_ok=True)
    (fdir / "targets.h5").unlink(missing_ok=True)  # a fold being redone must not look complete halfway
    write_json_atomic(fdir / "selected.json", selected)
    write_json_atomic(fdir / "bins.json", {"edges_months": [float(e) for e in lab.edges], "fitted_on": cfg.bins_from})
    write_json_atomic(fdir / "scaler.json", scaler_doc)
    train_ids, val_ids = list(fold[0]), list(fold[1])
    n = max(len(train_ids), len(val_ids))
    tables = {
        "labels.csv": pd.DataFrame({"case_id": lab.ids, "split": np.where(lab.is_train, "train", "val"),
                                    "survival_months": lab.times, "censorship": lab.cens, "bin": lab.bins}),
        "split.csv": pd.DataFrame({"train": train_ids + [""] * (n - len(train_ids)),
                                   "val": val_ids + [""] * (n - len(val_ids))}),
        "risk_groups.csv": groups}
    for name, table in tables.items():
        with atomic_path(fdir / name) as tmp:
            table.to_csv(tmp, index=False)
    if sel.stats is not None and len(sel.stats):
        with atomic_path(fdir / "de_stats.csv") as tmp:
            sel.stats.rename_axis("feature").to_csv(tmp)
    write_targets(fdir / "targets.h5", lab.ids, family_names, matrices,
                  attrs={"fold": k, "de_method": method, "fingerprint": digest})


def run_fold(k: int, fold: Fold, data: GenomicsData, x_all: pd.DataFrame, matches: list[FamilyMatch],
              method: str, cfg: GenomicsConfig, fdir: Path, digest: str) -> ItemResult:
    """Bins, selection, scaled targets and the files of fold ``k``."""
    lab = _FoldLabels.of(fold, data, cfg)
    x, x_t, norm, n_imputed = _target_values(lab, data, x_all)
    sel, groups = _select(k, lab, x, x_t, data, method, cfg)
    chosen = set(sel.selected)
    selected = {m.name: [f for f in m.features if f in chosen] for m in matches}
    scaler_doc: dict = {}
    matrices = []
    for m in matches:
        feats = selected[m.name]
        sc = fit_scaler(x_t[feats], lab.train_ids)
        matrices.append(sc.transform(x_t[feats].to_numpy(dtype=np.float64)) if feats
                        else np.zeros((len(lab.ids), 0), np.float32))
        scaler_doc[m.name] = {"features": feats, "mean": sc.mean.tolist(), "std": sc.std.tolist()}
    if n_imputed:
        norm["imputed_values"] = n_imputed
    scaler_doc["normalisation"] = norm
    _write_fold(fdir, k, lab, fold, selected, scaler_doc, groups, sel, matrices, [m.name for m in matches], method,
                cfg, digest)
    metrics = {**fold_metrics(selected, matches), "high": sel.n_high, "low": sel.n_low}
    msg = f"{n_imputed} missing value(s) imputed with the training mean" if n_imputed else ""
    return ItemResult(f"fold_{k}", "done", message=msg, metrics=metrics)


def _group_table(train_ids: list[str], high: np.ndarray, low: np.ndarray,
                 draws: np.ndarray | None = None) -> pd.DataFrame:
    """case_id, group (high | low | out), draws (times the case counts in the test; 1 per case by default)."""
    group = np.where(high, "high", np.where(low, "low", "out"))
    n = np.where(group == "out", 0, 1) if draws is None else draws
    return pd.DataFrame({"case_id": train_ids, "group": group, "draws": n})


def _loader_groups(train_ids: list[str], bins: np.ndarray, cens: np.ndarray, data: GenomicsData, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Official protocol: high/low row indices (with repeats) from one pass of the released code's loader.

    The loader walks the training cases in cohort-table order (as the released dataset keeps its csv
    order), so the draw is made in that order and mapped back to ``train_ids`` rows.
    """
    pos = data.clinical.index.get_indexer(train_ids)
    order = np.argsort(pos, kind="stable")
    hi, lo = loader_risk_groups(bins[order], cens[order], seed)
    high, low = order[hi], order[lo]
    draws = np.bincount(np.concatenate([high, low]), minlength=len(train_ids))
    in_high = np.zeros(len(train_ids), bool)
    in_high[high] = True
    in_low = np.zeros(len(train_ids), bool)
    in_low[low] = True
    return high, low, _group_table(train_ids, in_high, in_low, draws)
