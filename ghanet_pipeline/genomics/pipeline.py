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
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .. import __version__
from ..core.errors import InputError, MismatchError
from ..core.files import atomic_path, remove_stale_temps, write_json_atomic
from ..core.fingerprints import (
    Fingerprint,
    check_same,
    component_from_items,
    component_from_mapping,
    file_component,
    fingerprint,
    fingerprint_digest,
    from_json,
    to_json,
)
from ..core.runs import ItemResult, run_items, versions, write_run_log
from .config import GenomicsConfig
from .families import FamilyMatch, match_families, read_families
from .folds import Fold, make_folds, read_splits, write_splits
from .per_fold import fold_metrics, run_fold
from .selection import choose_method
from .tables import GenomicsData, first_non_count, read_counts, read_mcat_table

log = logging.getLogger(__name__)

FOLD_FILES = ("selected.json", "bins.json", "labels.csv", "scaler.json", "split.csv", "targets.h5")


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


def _fingerprint(cfg: GenomicsConfig) -> Fingerprint:
    """What determines the outputs: the parameters (``n_cpus`` and file names excluded) and the input
    files' bytes."""
    params = {k: v for k, v in asdict(cfg).items()
              if k not in ("n_cpus", "table", "families", "clinical", "splits", "preset", "option_sources",
                        "protocol")}
    if cfg.splits:
        params.pop("folds")
        if cfg.ttest_groups != "loader":       # the loader draw is seeded: the seed matters then
            params.pop("seed")
    return fingerprint(parameters=component_from_mapping(params),
                       input_files=file_component(_input_files(cfg), "input tables"))


def load_inputs(cfg: GenomicsConfig) -> GenomicsData:
    """Read the table (MCAT) or counts + clinical, validating as documented in ``tables``."""
    allow_nan = cfg.impute == "train-mean"
    if cfg.clinical:
        return read_counts(cfg.table, cfg.clinical, allow_nan=allow_nan)
    return read_mcat_table(cfg.table, allow_nan=allow_nan)


def _selection_method(cfg: GenomicsConfig, x_all: pd.DataFrame, notes: list[str]) -> tuple[str, str]:
    """(method, why) of the differential selection; DESeq2 on values that are not raw counts is refused."""
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
    return method, reason


def _splits(cfg: GenomicsConfig, data: GenomicsData, notes: list[str]) -> tuple[list[Fold], str]:
    """The folds (read from ``--splits`` or made stratified) and a sentence saying which."""
    if cfg.splits:
        folds = read_splits(cfg.splits, data.case_ids, notes)
        source = f"read from {cfg.splits}"
    else:
        folds = make_folds(data.clinical, cfg.folds, cfg.seed, cfg.n_bins)
        source = f"{cfg.folds} folds stratified by (time bin x event), seed {cfg.seed}"
    notes.append(f"splits: {source}")
    return folds, source


def preprocess_genomics(cfg: GenomicsConfig, out: Path | str, overwrite: bool = False,
                        on_fold: Callable[[ItemResult], None] | None = None) -> GenomicsResult:
    """Run the whole genomics preprocessing and write ``<out>/genomics/``; see the module docstring."""
    started = time.time()
    cfg.validate()
    out = Path(out)
    gdir = out / "genomics"
    data = load_inputs(cfg)
    notes = list(data.notes)
    matches, warns = match_families(read_families(cfg.families), data.feature_gene, cfg.families)
    for w in warns:
        log.warning(w)
    tested = sorted({f for m in matches for f in m.features})
    x_all = data.features[tested]
    method, reason = _selection_method(cfg, x_all, notes)
    folds, split_source = _splits(cfg, data, notes)
    for n in notes:
        log.info(n)

    fp = _fingerprint(cfg)
    _prepare_out(gdir, fp, len(folds), overwrite)
    write_json_atomic(gdir / "config.json", {
        "ghanet_version": __version__, "protocol": cfg.protocol, "preset": cfg.preset, "config": asdict(cfg),
        "de_method": method, "de_method_reason": reason, "input_kind": data.kind, "n_cases": len(data.clinical),
        "n_features_tested": len(tested), "n_folds": len(folds), "splits": split_source, "notes": notes,
        "warnings": warns, "fingerprint": to_json(fp), "fingerprint_digest": fingerprint_digest(fp),
        "versions": versions()})
    write_json_atomic(gdir / "families.json", [m.to_json() for m in matches])
    cases = data.clinical.reset_index()[["case_id", "survival_months", "censorship", "slide_ids"]]
    with atomic_path(gdir / "cases.csv") as tmp:
        cases.to_csv(tmp, index=False)
    write_splits(gdir / "splits", folds)
    digest = fingerprint_digest(fp)

    def work(k: int) -> ItemResult:
        fdir = gdir / f"fold_{k}"
        remove_stale_temps(fdir)  # a killed run's half-written files (never a live writer's)
        if not overwrite and _fold_complete(fdir, digest):
            sel = json.loads((fdir / "selected.json").read_text())
            return ItemResult(f"fold_{k}", "skipped", metrics=fold_metrics(sel, matches))
        return run_fold(k, folds[k], data, x_all, matches, method, cfg, fdir, digest)

    results = run_items(range(len(folds)), lambda k: f"fold_{k}", work, on_done=on_fold)
    summary = _summary(gdir, matches, len(folds))
    log_path = write_run_log(out, "preprocess-genomics", {**asdict(cfg), "out": str(out), "overwrite": overwrite,
                                                          "de_method_used": method}, results, started)
    return GenomicsResult(gdir, data.kind, method, reason, matches, warns, notes, results, summary, log_path)


def _stored_fingerprint(doc: dict) -> Fingerprint | None:
    """The fingerprint recorded in a genomics ``config.json`` (also the ``params`` / ``inputs_sha256`` form
    of earlier versions); None when it cannot be read."""
    old = doc.get("fingerprint")
    if isinstance(old, dict) and "params" in old:  # written before the shared fingerprint format
        return fingerprint(parameters=component_from_mapping(dict(old.get("params") or {})),
                           input_files=component_from_items({k: str(v)[:16] for k, v in
                                                             (old.get("inputs_sha256") or {}).items()},
                                                            "input tables"))
    try:
        return from_json(old)
    except MismatchError:
        return None


def _prepare_out(gdir: Path, fp: Fingerprint, n_folds: int, overwrite: bool) -> None:
    """Refuse to mix outputs of different inputs/parameters; with overwrite, remove stale folds/splits."""
    gdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(gdir)
    cfg_path = gdir / "config.json"
    if cfg_path.is_file() and not overwrite:
        try:
            old = _stored_fingerprint(json.loads(cfg_path.read_text()))
        except (OSError, json.JSONDecodeError):
            old = None
        fix = "Pass --overwrite to replace them or choose another --out."
        if old is None:
            raise MismatchError(f"{gdir} holds outputs whose inputs cannot be checked (no readable fingerprint "
                                f"in its config.json). {fix}")
        check_same(old, fp, what=f"genomics folder {gdir}", fix=fix)
    if overwrite:
        for p in gdir.glob("fold_*"):
            if p.is_dir() and p.name[5:].isdigit() and int(p.name[5:]) >= n_folds:
                shutil.rmtree(p)
        for p in (gdir / "splits").glob("splits_*.csv"):
            stem = p.stem[len("splits_"):]
            if stem.isdigit() and int(stem) >= n_folds:
                p.unlink()


def _fold_complete(fdir: Path, digest: str) -> bool:
    """All of a fold's files are there and its targets were made from inputs with this fingerprint digest."""
    if not all((fdir / f).is_file() for f in FOLD_FILES):
        return False
    try:
        with h5py.File(fdir / "targets.h5", "r") as f:
            return bool(f.attrs.get("complete", False)) and f.attrs.get("fingerprint", "") == digest
    except OSError:
        return False


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
