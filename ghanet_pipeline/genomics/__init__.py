"""Genomics preprocessing for G-HANet: tables (``tables``), gene families (``families``), folds
(``folds``), survival bins (``bins``), differential selection (``selection``), targets (``targets``), the
stage's options (``config``) and the stage itself (``pipeline``).

Outputs live in ``<out>/genomics/`` (docs/architecture.md, "Genomics outputs"). Training code
reads them with :func:`load_fold` / :func:`list_folds`; :func:`preprocess_genomics` writes them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import InputError
from .config import GenomicsConfig

_FOLD_RE = re.compile(r"^fold_(\d+)$")


@dataclass
class FoldData:
    """One fold of ``<out>/genomics``.

    ``families``: names in token order. ``labels``: indexed by case_id with survival_months,
    censorship (1 = censored), bin (0..3), split (train|val). ``bin_edges_months``: 5 edges.
    ``selected``: family -> selected feature names (may be empty). ``targets``: case_id -> one float32
    vector per family (length = len(selected[family]), possibly 0). ``scaler``: scaler.json content.
    """

    fold: int
    families: list[str]
    train_ids: list[str]
    val_ids: list[str]
    labels: pd.DataFrame
    bin_edges_months: list[float]
    selected: dict[str, list[str]]
    targets: dict[str, list[np.ndarray]]
    scaler: dict
    bins_fitted_on: str = "train"
    de_method: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def family_sizes(self) -> list[int]:
        """Number of selected features per family, token order (what ``create_model`` needs)."""
        return [len(self.selected[f]) for f in self.families]


def list_folds(genomics_dir: Path | str) -> list[int]:
    """Fold numbers (sorted) that have a complete ``fold_<k>/targets.h5`` under ``genomics_dir``."""
    gdir = Path(genomics_dir)
    out = []
    if not gdir.is_dir():
        return out
    for p in gdir.iterdir():
        m = _FOLD_RE.match(p.name)
        if m and p.is_dir() and (p / "targets.h5").is_file():
            out.append(int(m.group(1)))
    return sorted(out)


def load_fold(genomics_dir: Path | str, k: int) -> FoldData:
    """Load fold ``k`` of ``<out>/genomics`` (pass the ``genomics`` folder itself).

    Raises InputError when a file is missing or the files disagree (e.g. targets vs selected).
    """
    from .targets import read_targets

    gdir = Path(genomics_dir)
    fdir = gdir / f"fold_{k}"
    need = ("selected.json", "bins.json", "labels.csv", "scaler.json", "targets.h5")
    missing = [f for f in need if not (fdir / f).is_file()]
    if missing:
        raise InputError(f"{fdir}: missing {', '.join(missing)}; run `ghanet preprocess-genomics` "
                         f"(with --overwrite if it was interrupted)")
    selected = json.loads((fdir / "selected.json").read_text())
    bins = json.loads((fdir / "bins.json").read_text())
    scaler = json.loads((fdir / "scaler.json").read_text())
    labels = pd.read_csv(fdir / "labels.csv", dtype={"case_id": str, "split": str}).set_index("case_id")
    case_ids, families, mats, attrs = read_targets(fdir / "targets.h5")
    if not attrs.get("complete", False):
        raise InputError(f"{fdir / 'targets.h5'} is incomplete; rerun preprocess-genomics with --overwrite")
    for fam, m in zip(families, mats, strict=False):
        if fam not in selected or m.shape[1] != len(selected[fam]):
            raise InputError(f"{fdir}: targets.h5 family {fam!r} has {m.shape[1]} features but selected.json "
                             f"lists {len(selected.get(fam, []))}; rerun preprocess-genomics with --overwrite")
    targets = {cid: [m[i] for m in mats] for i, cid in enumerate(case_ids)}
    return FoldData(
        fold=k, families=families,
        train_ids=list(labels.index[labels["split"] == "train"]),
        val_ids=list(labels.index[labels["split"] == "val"]),
        labels=labels[["survival_months", "censorship", "bin", "split"]],
        bin_edges_months=[float(e) for e in bins["edges_months"]],
        selected={f: list(selected[f]) for f in families},
        targets=targets, scaler=scaler, bins_fitted_on=bins.get("fitted_on", ""),
        de_method=str(attrs.get("de_method", "")))


def __getattr__(name: str):
    """Lazy access to the heavier writer side (``preprocess_genomics``, ``GenomicsConfig``)."""
    if name in ("preprocess_genomics", "GenomicsResult"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)


__all__ = ["FoldData", "load_fold", "list_folds", "preprocess_genomics", "GenomicsConfig", "GenomicsResult"]
