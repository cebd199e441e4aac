"""``preprocess_genomics``: inputs -> families -> folds -> per-fold bins, selection, targets -> summary.

Writes under ``<out>/genomics/`` (layout in docs/architecture.md, "Genomics outputs").
Every file is written atomically; a fold whose outputs exist, are complete and were made from the same
inputs and parameters is skipped (``overwrite`` redoes it); outputs from other inputs/parameters are
an error unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .. import __version__
from ..core.errors import ConfigError, InputError, MismatchError
from ..core.files import atomic_path, file_sha256, remove_stale_temps, write_json_atomic
from ..core.fingerprints import check_same, component_from_items, component_from_mapping
from ..core.runs import ItemResult, run_items, versions, write_run_log
from ..protocols.presets import GENOMICS_FIELDS, resolve
from ..protocols.released import loader_risk_groups
from .bins import assign_bins, fit_bin_edges
from .families import FamilyMatch, match_families, read_families
from .folds import Fold, make_folds, read_splits, write_splits
from .selection import DE_METHODS, Selection, choose_method, deseq2_select, risk_groups, ttest_select
from .tables import GenomicsData, first_non_count, read_counts, read_mcat_table
from .targets import fit_scaler, impute_train_mean, size_factors, write_targets

log = logging.getLogger(__name__)

FOLD_FILES = ("selected.json", "bins.json", "labels.csv", "scaler.json", "split.csv", "targets.h5")


@dataclass
class GenomicsConfig:
    """Options of ``preprocess-genomics`` (defaults = CLI defaults).

    ``table``: MCAT-style table, or a raw counts matrix when ``clinical`` is given. ``splits``: folder
    of MCAT ``splits_<k>.csv`` (else ``folds`` stratified folds are made with ``seed``). ``padj`` /
    ``lfc``: DESeq2 thresholds (padj < padj, |log2FC| >= lfc); ``pvalue``: t-test threshold (p < pvalue).
    ``impute``: ``none`` (missing values are an error) or ``train-mean``. ``protocol`` / ``preset``
    (``protocols.py``) fill ``de_method``, ``bins_from``, ``lfc`` and ``ttest_groups`` left at None;
    ``option_sources`` records where each came from. ``seed`` also seeds the official loader draw.
    """

    table: str
    families: str
    clinical: str | None = None
    splits: str | None = None
    folds: int = 5
    de_method: str | None = None
    bins_from: str | None = None
    seed: int = 0
    padj: float = 0.05
    lfc: float | None = None
    pvalue: float = 0.05
    impute: str = "none"
    n_bins: int = 4
    n_cpus: int = 1
    protocol: str = "ghanet"
    preset: str | None = None
    ttest_groups: str | None = None
    option_sources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        values, sources = resolve(self.protocol, self.preset, GENOMICS_FIELDS,
                                  {f: getattr(self, f) for f in GENOMICS_FIELDS})
        for f, v in values.items():
            setattr(self, f, v)
        self.option_sources = {**sources, **{k: v for k, v in self.option_sources.items() if k in sources
                                             and sources[k] == "explicit"}}

    def validate(self) -> None:
        if self.de_method not in DE_METHODS:
            raise ConfigError(f"--de-method {self.de_method!r}: choose one of {', '.join(DE_METHODS)}")
        if self.bins_from not in ("train", "cohort"):
            raise ConfigError(f"--bins-from {self.bins_from!r}: choose train or cohort")
        if self.ttest_groups not in ("cases", "loader"):
            raise ConfigError(f"ttest_groups {self.ttest_groups!r}: choose cases or loader")
        if self.impute not in ("none", "train-mean"):
            raise ConfigError(f"--impute {self.impute!r}: choose none or train-mean")
        if not 0 < self.padj <= 1 or not 0 < self.pvalue <= 1:
            raise ConfigError("--padj and --pvalue must be in (0, 1]")
        if self.lfc < 0:
            raise ConfigError("--lfc must be >= 0 (absolute log2 fold change)")
        if self.n_bins != 4:
            raise ConfigError("only 4 survival bins are supported (risk groups use bins 0-1 vs 2-3)")


@dataclass
class GenomicsResult:
    """What a run did: the resolved method, family matches, per-fold results and the summary table."""

    out_dir: Path
    kind: str
    de_method: str
    de_reason: str
    matches: list[FamilyMatch]
    warnings: list[str]
    notes: list[str]
    results: list[ItemResult]
    summary: pd.DataFrame
    log_path: Path | None = None


def _input_files(cfg: GenomicsConfig) -> dict[str, str]:
    files = {"table": cfg.table, "families": cfg.families}
    if cfg.clinical:
        files["clinical"] = cfg.clinical
    if cfg.splits:
        for p in sorted(Path(cfg.splits).glob("splits_*.csv")):
            files[f"splits/{p.name}"] = str(p)
    return files


def _fingerprint(cfg: GenomicsConfig) -> dict:
    """Parameters and input hashes that determine the outputs (n_cpus excluded)."""
    params = {k: v for k, v in asdict(cfg).items()
              if k not in ("n_cpus", "table", "families", "clinical", "splits", "preset", "option_sources",
                        "protocol")}
    if cfg.splits:
        params.pop("folds")
        if cfg.ttest_groups != "loader":       # the loader draw is seeded: the seed matters then
            params.pop("seed")
    hashes = {k: file_sha256(v) for k, v in _input_files(cfg).items()}
    return {"params": params, "inputs_sha256": hashes}


def load_inputs(cfg: GenomicsConfig) -> GenomicsData:
    """Read the table (MCAT) or counts + clinical, validating as documented in ``tables``."""
    allow_nan = cfg.impute == "train-mean"
    if cfg.clinical:
        return read_counts(cfg.table, cfg.clinical, allow_nan=allow_nan)
    return read_mcat_table(cfg.table, allow_nan=allow_nan)


def preprocess_genomics(cfg: GenomicsConfig, out: Path | str, overwrite: bool = False,
                        on_fold: Callable[[ItemResult], None] | None = None) -> GenomicsResult:
    """Run the whole genomics preprocessing and write ``<out>/genomics/``; see the module docstring."""
    started = time.time()
    cfg.validate()
    out = Path(out)
    gdir = out / "genomics"
    data = load_inputs(cfg)
    notes = list(data.notes)
    families = read_families(cfg.families)
    matches, warns = match_families(families, data.feature_gene, cfg.families)
    for w in warns:
        log.warning(w)
    tested = sorted({f for m in matches for f in m.features})
    x_all = data.features[tested]

    method, reason = choose_method(cfg.de_method, x_all)
    if method == "deseq2":
        bad = first_non_count(x_all)
        if bad is not None and not (cfg.impute == "train-mean" and np.isnan(bad[2])):
            case, col, val = bad
            raise InputError(f"{cfg.table}: case {case!r}, column {col!r}: value {val} is not a raw count "
                             f"(non-negative integer); DESeq2 needs raw counts. Give raw counts, or use "
                             f"--de-method ttest for normalised values")
    log.info("differential selection: %s (%s)", method, reason)
    if cfg.ttest_groups == "loader" and method != "ttest":
        notes.append(f"t-test groups 'loader' apply to the t-test only; {method} uses each training case once")

    if cfg.splits:
        folds = read_splits(cfg.splits, data.case_ids, notes)
        split_source = f"read from {cfg.splits}"
    else:
        folds = make_folds(data.clinical, cfg.folds, cfg.seed, cfg.n_bins)
        split_source = f"{cfg.folds} folds stratified by (time bin x event), seed {cfg.seed}"
    notes.append(f"splits: {split_source}")
    for n in notes:
        log.info(n)

    fingerprint = _fingerprint(cfg)
    _prepare_out(gdir, fingerprint, len(folds), overwrite)
    config_doc = {"ghanet_version": __version__, "protocol": cfg.protocol, "preset": cfg.preset,
                  "config": asdict(cfg), "de_method": method,
                  "de_method_reason": reason, "input_kind": data.kind, "n_cases": len(data.clinical),
                  "n_features_tested": len(tested), "n_folds": len(folds), "splits": split_source,
                  "notes": notes, "warnings": warns, "fingerprint": fingerprint, "versions": versions()}
    write_json_atomic(gdir / "config.json", config_doc)
    write_json_atomic(gdir / "families.json", [m.to_json() for m in matches])
    cases = data.clinical.reset_index()[["case_id", "survival_months", "censorship", "slide_ids"]]
    with atomic_path(gdir / "cases.csv") as tmp:
        cases.to_csv(tmp, index=False)
    write_splits(gdir / "splits", folds)

    fp_text = json.dumps(fingerprint, sort_keys=True)

    def work(k: int) -> ItemResult:
        fdir = gdir / f"fold_{k}"
        remove_stale_temps(fdir)  # a killed run's half-written files (never a live writer's)
        if not overwrite and _fold_complete(fdir, fp_text):
            sel = json.loads((fdir / "selected.json").read_text())
            return ItemResult(f"fold_{k}", "skipped", metrics=_fold_metrics(sel, matches))
        return _run_fold(k, folds[k], data, x_all, matches, method, cfg, fdir, fp_text)

    results = run_items(range(len(folds)), lambda k: f"fold_{k}", work, on_done=on_fold)
    summary = _summary(gdir, matches, len(folds))
    log_path = write_run_log(out, "preprocess-genomics", {**asdict(cfg), "out": str(out), "overwrite": overwrite,
                                                          "de_method_used": method}, results, started)
    return GenomicsResult(gdir, data.kind, method, reason, matches, warns, notes, results, summary, log_path)


def _components(fp: dict) -> dict:
    """The stored genomics fingerprint as provenance components (so differences are named)."""
    return {"parameters": component_from_mapping(dict(fp.get("params") or {})),
            "input files": component_from_items({k: str(v)[:16] for k, v in (fp.get("inputs_sha256") or {}).items()},
                                                "input tables")}


def _prepare_out(gdir: Path, fingerprint: dict, n_folds: int, overwrite: bool) -> None:
    """Refuse to mix outputs of different inputs/parameters; with overwrite, remove stale folds/splits."""
    gdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(gdir)
    cfg_path = gdir / "config.json"
    if cfg_path.is_file() and not overwrite:
        try:
            old = json.loads(cfg_path.read_text()).get("fingerprint")
        except (OSError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(fingerprint)):
            fix = "Pass --overwrite to replace them or choose another --out."
            if not isinstance(old, dict):
                raise MismatchError(f"{gdir} holds outputs whose inputs cannot be checked (no readable fingerprint "
                                    f"in its config.json). {fix}")
            check_same(_components(old), _components(fingerprint), what=f"genomics folder {gdir}", fix=fix)
    if overwrite:
        for p in gdir.glob("fold_*"):
            if p.is_dir() and p.name[5:].isdigit() and int(p.name[5:]) >= n_folds:
                shutil.rmtree(p)
        for p in (gdir / "splits").glob("splits_*.csv"):
            stem = p.stem[len("splits_"):]
            if stem.isdigit() and int(stem) >= n_folds:
                p.unlink()


def _fold_complete(fdir: Path, fp_text: str) -> bool:
    if not all((fdir / f).is_file() for f in FOLD_FILES):
        return False
    try:
        with h5py.File(fdir / "targets.h5", "r") as f:
            return bool(f.attrs.get("complete", False)) and f.attrs.get("fingerprint", "") == fp_text
    except OSError:
        return False


def _fold_metrics(selected: dict[str, list[str]], matches: list[FamilyMatch]) -> dict:
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


def _run_fold(k: int, fold: Fold, data: GenomicsData, x_all: pd.DataFrame, matches: list[FamilyMatch],
              method: str, cfg: GenomicsConfig, fdir: Path, fp_text: str) -> ItemResult:
    train_ids, val_ids = fold
    ids = list(train_ids) + list(val_ids)
    label = f"fold {k}"
    clin = data.clinical.loc[ids]
    times = clin["survival_months"].to_numpy(float)
    cens = clin["censorship"].to_numpy(int)
    is_train = np.arange(len(ids)) < len(train_ids)
    edges = fold_bin_edges(data.clinical, list(train_ids), cfg.bins_from, cfg.n_bins)
    bins = assign_bins(times, edges)

    # features of this fold's cases (raw), with training-mean imputation when asked
    x = x_all.loc[ids]
    x, n_imputed = impute_train_mean(x, list(train_ids), integer=(data.kind == "counts"))
    # targets: counts -> size factors (training reference, all genes) -> log1p; then z-score (train)
    norm: dict = {"method": "zscore (train mean, population std; std < 1e-8 -> 1)"}
    if data.kind == "counts":
        full = data.features.loc[ids]
        full, _ = impute_train_mean(full, list(train_ids), integer=True)
        sf, log_geo, sf_note = size_factors(full.to_numpy(), is_train)
        values = np.log1p(x.to_numpy(dtype=np.float64) / sf[:, None])
        x_t = pd.DataFrame(values, index=x.index, columns=x.columns)
        norm = {"method": "size factors (median of ratios, training reference) -> log1p(count / sf) -> "
                          "zscore (train mean, population std; std < 1e-8 -> 1)",
                "size_factor_note": sf_note,
                "size_factors": {c: float(s) for c, s in zip(ids, sf, strict=False)}}
    else:
        x_t = x.astype(np.float64)
    high, low = risk_groups(bins[is_train], cens[is_train])
    groups = _group_table(list(train_ids), high, low)
    x_train = x.loc[list(train_ids)]
    if method == "ttest":
        t_high, t_low = high, low
        if cfg.ttest_groups == "loader":
            t_high, t_low, groups = _loader_groups(list(train_ids), bins[is_train], cens[is_train], data, cfg.seed)
        sel = ttest_select(x_t.loc[list(train_ids)], t_high, t_low, cfg.pvalue, label)
    elif method == "deseq2":
        sel = deseq2_select(x_train, high, low, cfg.padj, cfg.lfc, cfg.n_cpus, label)
    else:
        sel = Selection("none", list(x.columns), n_high=int(high.sum()), n_low=int(low.sum()))
    chosen = set(sel.selected)
    selected = {m.name: [f for f in m.features if f in chosen] for m in matches}

    scaler_doc: dict = {}
    matrices = []
    for m in matches:
        feats = selected[m.name]
        sc = fit_scaler(x_t[feats], list(train_ids))
        matrices.append(sc.transform(x_t[feats].to_numpy(dtype=np.float64)) if feats
                        else np.zeros((len(ids), 0), np.float32))
        scaler_doc[m.name] = {"features": feats, "mean": sc.mean.tolist(), "std": sc.std.tolist()}
    if n_imputed:
        norm["imputed_values"] = n_imputed
    scaler_doc["normalisation"] = norm

    fdir.mkdir(parents=True, exist_ok=True)
    (fdir / "targets.h5").unlink(missing_ok=True)  # a fold being redone must not look complete halfway
    write_json_atomic(fdir / "selected.json", selected)
    write_json_atomic(fdir / "bins.json", {"edges_months": [float(e) for e in edges], "fitted_on": cfg.bins_from})
    labels = pd.DataFrame({"case_id": ids, "split": np.where(is_train, "train", "val"),
                           "survival_months": times, "censorship": cens, "bin": bins})
    with atomic_path(fdir / "labels.csv") as tmp:
        labels.to_csv(tmp, index=False)
    write_json_atomic(fdir / "scaler.json", scaler_doc)
    n = max(len(train_ids), len(val_ids))
    split_df = pd.DataFrame({"train": list(train_ids) + [""] * (n - len(train_ids)),
                             "val": list(val_ids) + [""] * (n - len(val_ids))})
    with atomic_path(fdir / "split.csv") as tmp:
        split_df.to_csv(tmp, index=False)
    with atomic_path(fdir / "risk_groups.csv") as tmp:
        groups.to_csv(tmp, index=False)
    if sel.stats is not None and len(sel.stats):
        with atomic_path(fdir / "de_stats.csv") as tmp:
            sel.stats.rename_axis("feature").to_csv(tmp)
    write_targets(fdir / "targets.h5", ids, [m.name for m in matches], matrices,
                  attrs={"fold": k, "de_method": method, "fingerprint": fp_text})
    metrics = _fold_metrics(selected, matches)
    metrics.update({"high": sel.n_high, "low": sel.n_low})
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


def _summary(gdir: Path, matches: list[FamilyMatch], n_folds: int) -> pd.DataFrame:
    """Long table: family, fold (0..k-1 or 'mean'), listed_genes, found_genes, features_before,
    features_after; written to ``summary.csv``. Folds without outputs (failed) are left out."""
    rows = []
    for k in range(n_folds):
        p = gdir / f"fold_{k}" / "selected.json"
        if not p.is_file() or not (gdir / f"fold_{k}" / "targets.h5").is_file():
            continue
        sel = json.loads(p.read_text())
        for m in matches:
            rows.append({"family": m.name, "fold": str(k), "listed_genes": m.listed_genes,
                         "found_genes": m.found_genes, "features_before": len(m.features),
                         "features_after": len(sel.get(m.name, []))})
    df = pd.DataFrame(rows, columns=["family", "fold", "listed_genes", "found_genes", "features_before",
                                     "features_after"])
    if len(df):
        mean = (df.groupby("family", sort=False)
                .agg(listed_genes=("listed_genes", "first"), found_genes=("found_genes", "first"),
                     features_before=("features_before", "first"),
                     features_after=("features_after", "mean")).reset_index())
        mean["features_after"] = mean["features_after"].round(1)
        mean.insert(1, "fold", "mean")
        df = pd.concat([df, mean[df.columns]], ignore_index=True)
    with atomic_path(gdir / "summary.csv") as tmp:
        df.to_csv(tmp, index=False)
    return df
