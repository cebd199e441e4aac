"""Reconstruction targets: per-fold normalisation fitted on training cases, and the HDF5 writer/reader.

- Continuous / MCAT tables: z-score each selected feature with the training fold's mean and standard
  deviation (population std, ddof=0).
- Raw counts: median-of-ratios size factors (DESeq2's estimator; reference = geometric means over the
  training cases, computed on genes with no zero count in training), then ``log1p(count / size_factor)``,
  then the z-score above. Validation cases use the training reference, so nothing leaks.
- A feature with (near-)zero training std gets std = 1 (its targets are then constant, never NaN).
- Missing values (only with ``--impute train-mean``) are filled with the training mean of the raw
  feature before anything else (rounded for counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..core.attrs import plain
from ..core.files import atomic_path

STD_FLOOR = 1e-8


def impute_train_mean(x: pd.DataFrame, train_ids: list[str], integer: bool = False) -> tuple[pd.DataFrame, int]:
    """Fill NaN with the training mean per column (0 if a column has no training value). Returns (x, n_filled)."""
    n_missing = int(x.isna().to_numpy().sum())
    if n_missing == 0:
        return x, 0
    means = x.loc[train_ids].mean(axis=0, skipna=True).fillna(0.0)
    if integer:
        means = means.round()
    return x.fillna(means), n_missing


def size_factors(counts: np.ndarray, train_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Median-of-ratios size factors for all rows of ``counts`` (cases x genes), reference from training rows.

    Returns (size_factors (n_cases,), log geometric means (n_genes,; NaN where not used), note).
    """
    from pydeseq2.preprocessing import deseq2_norm_fit

    counts = np.asarray(counts, dtype=np.float64)
    # reference (log geometric means over the training rows, genes with no zero count): pydeseq2's fit
    log_means, usable = deseq2_norm_fit(counts[train_mask])
    log_geo = np.where(usable, log_means, np.nan)
    if not usable.any():
        return np.ones(len(counts)), log_geo, "no gene is non-zero in every training case: size factors = 1"
    # the ratios are ours, not pydeseq2's deseq2_norm_transform: that takes the median over log ratios
    # including -inf for a zero count, which gives a held-out case with many zeros a size factor of 0
    with np.errstate(divide="ignore"):
        ratios = np.log(counts[:, usable]) - log_geo[usable]
    ratios[~np.isfinite(ratios)] = np.nan  # a zero count in a validation case says nothing
    sf = np.exp(np.nanmedian(np.where(np.isnan(ratios).all(axis=1, keepdims=True), 0.0, ratios), axis=1))
    return sf, log_geo, f"median-of-ratios on {int(usable.sum())} genes non-zero in every training case"


@dataclass
class Scaler:
    """Per-feature mean/std (after the optional count transform) fitted on the training fold."""

    features: list[str]
    mean: np.ndarray
    std: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


def fit_scaler(x: pd.DataFrame, train_ids: list[str]) -> Scaler:
    """Mean and std (ddof=0) of each column over the training cases; std below 1e-8 becomes 1."""
    tr = x.loc[train_ids].to_numpy(dtype=np.float64)
    mean = tr.mean(axis=0) if len(tr) else np.zeros(x.shape[1])
    std = tr.std(axis=0) if len(tr) else np.ones(x.shape[1])
    std = np.where(std < STD_FLOOR, 1.0, std)
    return Scaler(list(x.columns), mean, std)


def write_targets(path: Path | str, case_ids: list[str], families: list[str], matrices: list[np.ndarray],
                  attrs: dict | None = None) -> Path:
    """Write ``targets.h5``: ``case_ids`` (n,) str, ``family_<i>`` (n, n_i) float32 with attr ``name``,
    root attrs ``families`` (JSON list, token order), ``complete`` = True (written last)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("case_ids", data=np.array(case_ids, dtype=object), dtype=h5py.string_dtype())
            for i, (name, m) in enumerate(zip(families, matrices, strict=False)):
                m = np.asarray(m, dtype=np.float32).reshape(len(case_ids), -1)
                ds = f.create_dataset(f"family_{i}", data=m)
                ds.attrs["name"] = name
            f.attrs["families"] = json.dumps(list(families))
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
            f.attrs["complete"] = True
    return Path(path)


def read_targets(path: Path | str) -> tuple[list[str], list[str], list[np.ndarray], dict]:
    """Read ``targets.h5`` -> (case_ids, family names, matrices per family, root attrs)."""
    with h5py.File(path, "r") as f:
        families = json.loads(f.attrs["families"])
        case_ids = [c.decode() if isinstance(c, bytes) else str(c) for c in f["case_ids"][()]]
        mats = [np.asarray(f[f"family_{i}"][()], dtype=np.float32) for i in range(len(families))]
        attrs = {k: plain(v) for k, v in f.attrs.items()}
    return case_ids, families, mats, attrs
