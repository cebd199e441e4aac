"""Helpers for ghanet's own test suite (importable, like scikit-survival's ``sksurv.testing``).

Test modules import these instead of importing each other or ``conftest``. Nothing in the pipeline uses
them. What each helper makes:

- :func:`make_synthetic_study` -> :class:`SyntheticStudy`: the synthetic cohort's tables, `preprocess-genomics`
  on them (t-test, k folds) and feature bags made straight from the phenotypes (no slides, no encoder).
  tests/conftest.py builds one per session (fixture ``synthetic_study``).
- :func:`make_workflow_cohort`: a tiny cohort with real synthetic slides, manifests and a held-out manifest
  for the Snakemake workflow; :func:`workflow_config` writes its config, :func:`run_snakemake` runs it and
  :func:`check_workflow_outputs` asserts what a finished run must hold.
- :data:`TINY_ENCODER` / :func:`register_tiny_encoder`: an 8-wide encoder in the registry (a 4x4-stride conv
  + pooling) that takes a slide end to end in milliseconds; :data:`TINY_ENC` is the encoder record of its
  bags; :func:`write_tiny_bags` writes random bags recorded as made by it; :func:`make_run` a training run
  folder of tiny fold models saved through the real checkpoint API.
- :data:`TINY_TRAIN`: the options of a narrow, short training (what the plumbing tests train with);
  :func:`train_tiny` trains it on a study (tests/conftest.py's session fixture ``trained_run``).
- :func:`stop_after_epoch` / :func:`train_interrupted_after_epoch`: a training run stopped like Ctrl-C.
- :func:`snapshot`: every file under a folder with size, mtime and SHA-256 (to assert nothing changed).
- :func:`write_csv`: a CSV file from a header and rows.
- :func:`package_env`: the environment for a Python subprocess that must import this same ghanet_pipeline.
- :mod:`ghanet_pipeline.testing.report`: a small trained + predicted run and its report, headless Chromium.

pytest is only imported inside functions, so importing this module costs nothing outside a test run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: the tiny test encoder's registry name and feature width
TINY_ENCODER = "tiny_test_encoder"
TINY_DIM = 8
#: the encoder record of bags made by the tiny encoder (what a checkpoint and a bag record)
TINY_ENC = {"encoder": TINY_ENCODER, "weights_sha256": "random:0", "input_size": 32, "target_mpp": 0.5,
            "patch_size": 256}
#: survival-bin edges (months) of the runs made by :func:`make_run`
TINY_EDGES = [0.0, 10.0, 20.0, 40.0, 80.0]


# ---------------------------------------------------------------------------------- the synthetic study

@dataclass(frozen=True)
class SyntheticStudy:
    """A synthetic cohort ready for training: ``tables`` (paths of the written table, families, clinical,
    counts), ``genomics`` (the preprocess-genomics output folder) and ``features`` (one bag per slide)."""

    root: Path
    cohort: Any  # demo.cohort.SyntheticCohort
    tables: dict[str, Path]
    genomics: Path
    features: Path

    def genomics_config(self, **over: Any) -> Any:
        """A GenomicsConfig on this study's tables (``over``: other fields, e.g. folds, protocol, seed)."""
        from ..genomics import GenomicsConfig

        return GenomicsConfig(table=str(self.tables["table"]), families=str(self.tables["families"]), **over)


def make_synthetic_study(root: Path, n_cases: int = 24, seed: int = 3, n_patches: int | tuple[int, int] = (20, 40),
                         folds: int = 3, dim: int = 1024) -> SyntheticStudy:
    """``make_cohort(n_cases, seed)`` written to root/inputs, preprocess-genomics (t-test, ``folds`` folds) into
    root/genomics and ``dim``-wide bags of ``n_patches`` patches per slide into root/features/synthetic."""
    from ..demo.bags import write_synthetic_bags
    from ..demo.cohort import make_cohort, write_cohort_tables
    from ..genomics import preprocess_genomics

    cohort = make_cohort(n_cases=n_cases, seed=seed)
    tables = write_cohort_tables(cohort, root / "inputs", table_name="table.csv")
    study = SyntheticStudy(root, cohort, tables, root / "genomics", root / "features" / "synthetic")
    preprocess_genomics(study.genomics_config(folds=folds, de_method="ttest"), root)
    write_synthetic_bags(cohort, study.features, n_patches=n_patches, dim=dim, seed=seed)
    return study


#: a narrow G-HANet trained for 2 epochs (TrainConfig fields): enough for every plumbing test
TINY_TRAIN: dict[str, Any] = dict(epochs=2, accum=4, dim=16, lr=5e-4)


def train_tiny(study: SyntheticStudy, out: Path, folds: tuple[int, ...] = (0, 1), run_name: str = "tiny",
               **over: Any) -> Any:
    """``train_cv`` of ``study`` into ``out``/train/``run_name`` with :data:`TINY_TRAIN` (+ ``over``) on
    ``folds``; returns its TrainResult."""
    from ..training.config import TrainConfig
    from ..training.cv import train_cv

    cfg = TrainConfig(**{**TINY_TRAIN, "folds": list(folds), **over})
    return train_cv(study.features, study.genomics, out, cfg, run_name=run_name)


def snapshot(folder: Path, content: bool = True) -> dict[str, tuple]:
    """Every file and folder under ``folder``: (size, mtime_ns[, sha256]) for files, ("dir", mtime_ns) for
    folders. Equal snapshots: nothing was written, touched or removed."""
    out: dict[str, tuple] = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        if p.is_dir():
            out[str(p.relative_to(folder))] = ("dir", st.st_mtime_ns)
        else:
            digest = (hashlib.sha256(p.read_bytes()).hexdigest(),) if content else ()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns, *digest)
    return out


def package_env(**extra: str) -> dict[str, str]:
    """os.environ with the folder holding this ghanet_pipeline first on PYTHONPATH (+ ``extra``), so that
    ``python -m ghanet_pipeline`` / ``python -c`` subprocesses import the code under test."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


# ---------------------------------------------------------------------------------- interrupted training

class Interrupted(KeyboardInterrupt):
    """Raised by :func:`stop_after_epoch`'s callback: the training stops as it would on Ctrl-C."""


def stop_after_epoch(epoch: int) -> Callable[..., None]:
    """A ``progress`` callback for train_cv that raises :class:`Interrupted` once ``epoch`` is finished."""

    def progress(kind: str, **info: object) -> None:
        if kind == "epoch" and info["epoch"] == epoch:
            raise Interrupted()

    return progress


def train_interrupted_after_epoch(epoch: int, *train_cv_args: Any, **train_cv_kwargs: Any) -> None:
    """Run ``train_cv`` and stop it as soon as ``epoch`` is finished; AssertionError if it did not stop."""
    from ..training.cv import train_cv

    try:
        train_cv(*train_cv_args, progress=stop_after_epoch(epoch), **train_cv_kwargs)
    except Interrupted:
        return
    raise AssertionError(f"training finished without reaching the end of epoch {epoch}")


# ---------------------------------------------------------------------------------- tiny encoder + runs

def register_tiny_encoder() -> None:
    """Register :data:`TINY_ENCODER` (a 4x4-stride conv to 8 channels, ReLU, global average pooling) unless
    it is registered already (tests/conftest.py removes it again after each test)."""
    from ..features.registry import ENCODERS, EncoderSpec, register_encoder

    if TINY_ENCODER in ENCODERS:
        return

    def build():
        import torch.nn as nn

        class Full(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, TINY_DIM, kernel_size=4, stride=4)

        return Full()

    def trunk(full):
        import torch.nn as nn

        return nn.Sequential(full.conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))

    register_encoder(EncoderSpec(name=TINY_ENCODER, dim=TINY_DIM, build=build, trunk=trunk,
                                 required_prefixes=("conv.",), hub_files=("tiny-*.pth",),
                                 how_to_get="(test encoder)"))


def make_run(run_dir: Path, encoder: dict, folds: tuple[int, ...] = (0, 1), in_dim: int = TINY_DIM,
             edges: list[float] = TINY_EDGES, model: str = "ghanet", medians: list[float] | None = None) -> Path:
    """A training run folder of tiny fold models (dim 16; G-HANet with families of 3 and 2 genes) saved
    through the real checkpoint API, recording ``encoder``. Each fold's ``train_risk_median`` is the
    model's median risk on 15 random bags (or ``medians[k]``)."""
    import torch

    from ..models import create_model, save_checkpoint

    for k in folds:
        torch.manual_seed(100 + k)
        cfg: dict[str, Any] = dict(in_dim=in_dim, n_bins=len(edges) - 1, dim=16, dropout=0.0)
        if model == "ghanet":
            cfg.update(family_sizes=[3, 2], heads=2, topk=0.25)
        m = create_model(model, **cfg).eval()
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            risks = [float(m(torch.rand(12, in_dim, generator=g) * 2)["risk"]) for _ in range(15)]
        meta = {"families": ["Tumor Supp", "Oncogenes"],
                "selected": {"Tumor Supp": ["a", "b", "c"], "Oncogenes": ["d", "e"]},
                "scaler": {}, "bin_edges_months": list(edges), "encoder": dict(encoder),
                "train_risk_median": float(np.median(risks)) if medians is None else medians[k], "fold": k,
                "epoch": 1}
        save_checkpoint(run_dir / f"fold_{k}", m, meta)
    return run_dir


def tiny_bag_attrs(slide_id: str, encoder: dict) -> dict:
    """Bag attrs of a slide whose bag was made with ``encoder`` (512-px patches at level 0, 0.25 um/px)."""
    return {"schema_version": 1, "slide_id": slide_id, **encoder, "patch_size_level0": 512,
            "level0_mpp": 0.25, "source_name": f"{slide_id}.svs", "source_bytes": 1, "ghanet_version": "test"}


def write_tiny_bags(folder: Path, ids: list[str], encoder: dict = TINY_ENC, n: int = 20,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """One bag of ``n`` random :data:`TINY_DIM`-wide features in [0, 2) per slide id; returns the features."""
    from ..features.bags import write_bag

    rng = np.random.default_rng(seed)
    feats = {}
    for sid in ids:
        f = (rng.random((n, TINY_DIM)) * 2).astype(np.float32)
        c = np.stack([np.arange(n) * 512, np.zeros(n)], axis=1).astype(np.int64)
        write_bag(folder / f"{sid}.h5", f, c, tiny_bag_attrs(sid, encoder))
        feats[sid] = f
    return feats


# ---------------------------------------------------------------------------------- workflow

def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """``path`` as a CSV file of ``header`` and ``rows``."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_workflow_cohort(tmp: Path, n_cases: int = 12, slide_px: int = 768) -> Path:
    """``n_cases`` cases (one ``slide_px``-square synthetic slide each, carrying the phenotype) + 2 held-out
    slides (phenotype 0.1 and 0.9) in ``tmp``: slides/, manifest.csv, holdout.csv, genomics_table.csv,
    families.csv. Inputs only: runs write their outputs elsewhere."""
    from ..demo.cohort import make_cohort, write_cohort_tables
    from ..wsi.synthetic import write_synthetic_slide

    cohort = make_cohort(n_cases=n_cases, seed=3, second_slide_fraction=0.0)
    write_cohort_tables(cohort, tmp, table_name="genomics_table.csv")
    (tmp / "slides").mkdir()
    rows = []
    for i, r in enumerate(cohort.clinical.itertuples()):
        write_synthetic_slide(tmp / "slides" / f"{r.slide_id}.tif", slide_px, slide_px,
                              phenotype=float(r.phenotype), seed=i)
        rows.append([r.slide_id, f"slides/{r.slide_id}.tif", r.case_id])
    write_csv(tmp / "manifest.csv", ["slide_id", "path", "case_id"], rows)
    new = []
    for i, ph in enumerate((0.1, 0.9)):
        write_synthetic_slide(tmp / "slides" / f"NEW-{i}.tif", slide_px, slide_px, phenotype=ph, seed=100 + i)
        new.append([f"NEW-{i}", f"slides/NEW-{i}.tif", f"NEW-{i}"])
    write_csv(tmp / "holdout.csv", ["slide_id", "path", "case_id"], new)
    return tmp


def workflow_config(tmp: Path, path: Path | None = None, **over: object) -> Path:
    """Workflow config for the cohort in ``tmp`` (CPU only, random weights, 3 folds x 2 epochs), written to
    ``path`` (default tmp/config.yaml). ``over``: top-level values; dicts update that section."""
    import yaml

    cfg: dict[str, Any] = {
        "out": str(tmp / "out"), "manifest": str(tmp / "manifest.csv"),
        "genomics_table": str(tmp / "genomics_table.csv"), "families": str(tmp / "families.csv"),
        "predict_manifest": str(tmp / "holdout.csv"), "folds": 3,
        "extract": {"weights": "random", "device": "cpu", "num_workers": 0, "gpu": 0, "threads": 1},
        "train": {"run_name": "wf", "model": "ghanet", "epochs": 2, "device": "cpu"},
        "predict": {"device": "cpu"}}
    for k, v in over.items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    path = path or tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake_path() -> Path:
    """The Snakemake beside the Python running the tests (the `workflow` extra)."""
    return Path(sys.executable).parent / "snakemake"


def run_snakemake(*args: str, cwd: Path, timeout: float = 900,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the venv's snakemake in ``cwd`` (its bin/ first on PATH, so jobs find the same `ghanet`)."""
    base = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(snakemake_path()), *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


def check_workflow_outputs(cohort: Path, out: Path, folds: int = 3, run: str = "wf", epochs: int = 2) -> None:
    """Assert what a finished workflow run on :func:`make_workflow_cohort` must hold: one complete bag per
    slide whose rows are segment's grid, every fold trained, the pooled report over all folds, risks for the
    held-out slides."""
    import h5py
    import pandas as pd

    manifest = pd.read_csv(cohort / "manifest.csv")
    new = pd.read_csv(cohort / "holdout.csv")
    bags = sorted((out / "features").glob("*/*.h5"))
    assert {b.stem for b in bags} == set(manifest.slide_id) | set(new.slide_id)
    for b in bags:  # bag rows = segment's grid
        with h5py.File(b) as f, h5py.File(out / "segment" / f"{b.stem}.coords.h5") as c:
            assert f.attrs["complete"] and (f["coords"][:] == c["coords"][:]).all()
    for k in range(folds):
        hist = json.loads((out / "train" / run / f"fold_{k}" / "history.json").read_text())
        assert hist["complete"] and len(hist["epochs"]) == epochs
    report = json.loads((out / "train" / run / "report" / "metrics.json").read_text())
    assert len(report["c_index_per_fold"]) == folds
    merged = json.loads((out / "train" / run / "metrics.json").read_text())
    assert len(merged["c_index_per_fold"]) == folds  # the run-level report covers every fold, not the last job's
    pred = pd.read_csv(out / "predict" / "predictions.csv")
    assert set(pred.case_id) == set(new.case_id)
    assert pred.risk.notna().all()
