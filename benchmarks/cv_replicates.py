"""Repeated cross-validation on a finished demo run's bags: what ``compare_models`` and ``compare_precisions``
share (their options, the t-interval, one fold assignment's genomics folder, one trained 5-fold replicate and the
pairing of validation folds across arms).

A replicate = one (fold assignment, training seed) pair; a fold assignment is ``preprocess-genomics --seed s``
of the demo's genomics table, so every arm of one replicate is scored on the same validation cases.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import add_record_args
from ghanet_pipeline.evaluation.paired import PairedDifference, paired_difference


def add_replicate_args(ap: argparse.ArgumentParser, *, work: str, seeds: int) -> None:
    """The options of a repeated cross-validation on a demo run (``--work`` and ``--seeds`` defaults per script)."""
    ap.add_argument("--demo-out", type=Path, default=Path("demo-out"))
    ap.add_argument("--work", type=Path, default=Path(work))
    ap.add_argument("--splits", type=int, default=3, help="fold assignments (preprocess-genomics seeds 0..n-1)")
    ap.add_argument("--seeds", type=int, default=seeds, help="training seeds per fold assignment")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--train-args", default="accum=4,lr=5e-4,dim=128", help="TrainConfig overrides (the demo's)")
    add_record_args(ap)


def single_threaded() -> None:
    """One thread per training step: fastest for the demo's tiny bags (see demo)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def train_overrides(text: str) -> dict[str, float | int]:
    """``"accum=4,lr=5e-4"`` -> ``{"accum": 4, "lr": 0.0005}`` (TrainConfig fields)."""
    over: dict[str, float | int] = {}
    for kv in text.split(","):
        k, v = kv.split("=")
        over[k] = int(v) if v.isdigit() else float(v)
    return over


def demo_bag_folders(demo_out: Path) -> list[Path]:
    """The demo run's bag folders (``features/<tag>`` holding ``.h5`` bags), sorted; empty when there is no
    finished demo run (its ``demo-data/genomics_table.csv`` is missing)."""
    feats = demo_out / "features"
    if not feats.is_dir() or not (demo_out / "demo-data" / "genomics_table.csv").is_file():
        return []
    return sorted(d for d in feats.iterdir() if d.is_dir() and any(d.glob("*.h5")))


def fold_assignment(demo_out: Path, dest: Path, folds: int, seed: int, table: Path | None = None) -> Path:
    """``preprocess-genomics`` of the demo's table (or ``table``, e.g. a shuffled copy) with fold seed ``seed``
    into ``dest``; returns ``dest``."""
    from ghanet_pipeline.genomics.config import GenomicsConfig
    from ghanet_pipeline.genomics.pipeline import preprocess_genomics

    data = demo_out / "demo-data"
    preprocess_genomics(GenomicsConfig(table=str(table or data / "genomics_table.csv"),
                                       families=str(data / "families.csv"), folds=folds, seed=seed), dest)
    return dest


def cross_validate(features: Path, root: Path, model: str, seed: int, args: argparse.Namespace,
                   over: dict[str, float | int], run_name: str) -> tuple[dict[int, float | None], Any, float]:
    """Train one k-fold replicate (resumable) on the genomics of ``root``; (c-index per validation fold, the
    training result, seconds)."""
    from ghanet_pipeline.training.config import TrainConfig
    from ghanet_pipeline.training.cv import train_cv

    t0 = time.perf_counter()
    cfg = TrainConfig(model=model, epochs=args.epochs, seed=seed, device="cpu", **over)
    res = train_cv(features, root / "genomics", root, cfg, run_name=run_name, resume=True)
    per_fold = {int(k): v for k, v in (res.metrics or {}).get("c_index_per_fold", {}).items()}
    return per_fold, res, round(time.perf_counter() - t0, 1)


def fold_scores(rows: list[dict], field: str, label: str) -> dict[tuple[int, int, int], float]:
    """C-index per (fold assignment, seed, validation fold) of the rows whose ``field`` is ``label``."""
    return {(r["split"], r["seed"], k): v for r in rows if r[field] == label
            for k, v in r["per_fold"].items() if v is not None}


def paired(rows: list[dict], field: str, a: str, b: str) -> PairedDifference:
    """``a - b`` on every validation fold both arms were scored on (same cases), with its t-interval."""
    return paired_difference(fold_scores(rows, field, a), fold_scores(rows, field, b))


def ci_text(bounds: list[float] | tuple[float, float], sign: str = "") -> str:
    """``[lo, hi]`` with three decimals (``sign="+"``: signed), ``n/a`` for an undefined interval."""
    return "n/a" if any(b != b for b in bounds) else "[{:{s}.3f}, {:{s}.3f}]".format(*bounds, s=sign)
