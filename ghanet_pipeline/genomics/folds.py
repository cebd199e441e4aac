"""Patient-level cross-validation folds: MCAT ``splits_<k>.csv`` files in and out, stratified k-fold.

MCAT/CLAM format: one CSV per fold, columns ``train`` and ``val`` holding case ids (the shorter
column padded with empty cells, an unnamed index column allowed). A ``test`` column, if present, is
ignored (noted).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.files import atomic_path
from ..core.labels import event_from_censorship
from ..core.tables import read_table_file
from .bins import assign_bins, fit_bin_edges

Fold = tuple[list[str], list[str]]  # (train case ids, val case ids)
_SPLIT_RE = re.compile(r"^splits_(\d+)\.csv$")


def read_splits(directory: Path | str, case_ids: list[str], notes: list[str] | None = None) -> list[Fold]:
    """Read ``splits_<k>.csv`` (k = 0, 1, ...) from ``directory``.

    Raises InputError when no file is found, k is not contiguous from 0, a fold's train and val
    overlap, or a split names cases that are not in the table (all such cases are listed).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"--splits {directory}: not a directory")
    files = {int(m.group(1)): p for p in directory.iterdir() if (m := _SPLIT_RE.match(p.name))}
    if not files:
        raise InputError(f"--splits {directory}: no splits_<k>.csv files (MCAT format: columns train, val)")
    ks = sorted(files)
    if ks != list(range(len(ks))):
        raise InputError(f"--splits {directory}: fold numbers {ks} must run 0..{len(ks) - 1} without gaps")
    known = set(case_ids)
    folds: list[Fold] = []
    for k in ks:
        path = files[k]
        df = read_table_file(path)
        cols = {c.lower(): c for c in df.columns}
        if "train" not in cols or "val" not in cols:
            raise InputError(f"{path}: needs columns 'train' and 'val' (found {list(df.columns)})")
        if "test" in cols and notes is not None:
            notes.append(f"{path.name}: column 'test' ignored (only train/val are used)")
        train = [s.strip() for s in df[cols["train"]] if s.strip()]
        val = [s.strip() for s in df[cols["val"]] if s.strip()]
        for name, ids in (("train", train), ("val", val)):
            dups = sorted({c for c in ids if ids.count(c) > 1}) if len(set(ids)) != len(ids) else []
            if dups:
                raise InputError(f"{path}: column {name!r} lists case(s) {dups[:5]} more than once")
        both = sorted(set(train) & set(val))
        if both:
            raise InputError(f"{path}: case(s) {both[:10]} are in both train and val; a case belongs to one side")
        missing = [c for c in train + val if c not in known]
        if missing:
            raise InputError(f"{path}: {len(missing)} case(s) are not in the genomics table: "
                             f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; drop them from the split "
                             f"or add them to the table")
        if not train or not val:
            raise InputError(f"{path}: empty train or val column")
        folds.append((train, val))
    unused = sorted(known - {c for tr, va in folds for c in tr + va})
    if unused and notes is not None:
        notes.append(f"{len(unused)} case(s) of the table are in no split file and are not used: "
                     f"{unused[:5]}{' ...' if len(unused) > 5 else ''}")
    return folds


def write_splits(directory: Path | str, folds: list[Fold]) -> list[Path]:
    """Write ``splits_<k>.csv`` (columns train, val; shorter column padded with empty cells)."""
    directory = Path(directory)
    paths = []
    for k, (train, val) in enumerate(folds):
        n = max(len(train), len(val))
        df = pd.DataFrame({"train": list(train) + [""] * (n - len(train)),
                           "val": list(val) + [""] * (n - len(val))})
        path = directory / f"splits_{k}.csv"
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
        paths.append(path)
    return paths


def _stratified_splits(strata: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's seeded ``StratifiedKFold``; plain shuffled ``KFold`` when every stratum is smaller
    than the number of folds (stratifying is then impossible)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    x = np.zeros((len(strata), 1))
    if np.all(np.unique(strata, return_counts=True)[1] < n_folds):
        return list(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x))
    with warnings.catch_warnings():  # small strata are spread as evenly as they can be: expected
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, strata))


def make_folds(clinical: pd.DataFrame, n_folds: int = 5, seed: int = 0, n_bins: int = 4) -> list[Fold]:
    """Patient-level k folds stratified by (survival time bin x event), seeded.

    ``clinical``: indexed by case_id with survival_months, censorship. Strata use bins fitted on the
    whole cohort (only for balancing folds; the labels use per-fold bins). The folds come from
    scikit-learn's ``StratifiedKFold(shuffle=True, random_state=seed)`` on these strata.
    """
    n = len(clinical)
    if n_folds < 2:
        raise InputError(f"--folds {n_folds}: need at least 2 folds")
    if n_folds > n:
        raise InputError(f"--folds {n_folds}: more folds than cases ({n})")
    times = clinical["survival_months"].to_numpy(float)
    cens = clinical["censorship"].to_numpy(int)
    if (cens == 0).sum() >= n_bins:
        tbin = assign_bins(times, fit_bin_edges(times, cens, times.min(), times.max(), n_bins))
    else:
        tbin = np.zeros(n, dtype=int)
    strata = tbin * 2 + event_from_censorship(cens)
    ids = np.asarray(clinical.index, dtype=object)
    fold_of = np.empty(n, dtype=int)
    for k, (_, val_idx) in enumerate(_stratified_splits(strata, n_folds, seed)):
        fold_of[val_idx] = k
    return [([str(c) for c in ids[fold_of != k]], [str(c) for c in ids[fold_of == k]]) for k in range(n_folds)]
