"""Shared test fixtures: small synthetic slides (built once per session), the real CMU slide, and the tiny
synthetic cohort + helpers of the workflow tests (tests/test_workflow.py local, tests/test_slurm.py SLURM)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

#: repository root (pipelines/Snakefile, pipelines/profiles/...)
REPO = Path(__file__).resolve().parents[1]
#: the Snakemake beside the Python running the tests (the `workflow` extra)
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

#: the real Aperio test slide (OpenSlide's CMU-1-Small-Region, 2220x2967 px at 0.499 um/px)
REAL_SLIDE = Path(__file__).resolve().parents[1].parent / "shared/data/CMU-1-Small-Region.svs"

#: physical size of the synthetic test tissue: 1024 x 1024 um (2048 px at 20x, 4096 px at 40x)
SYNTH_SIZE_UM = 1024
SYNTH_SEED = 5


@pytest.fixture(scope="session", autouse=True)
def _shared_engine_cache(tmp_path_factory: pytest.TempPathFactory):
    """One converted-encoder cache for the session (``GHANET_ENGINE_CACHE``, inherited by subprocesses): the
    OpenVINO engine converts each encoder x weights x input size once, not once per test output folder."""
    old = os.environ.get("GHANET_ENGINE_CACHE")
    os.environ["GHANET_ENGINE_CACHE"] = str(tmp_path_factory.mktemp("engine-cache"))
    yield
    if old is None:
        os.environ.pop("GHANET_ENGINE_CACHE", None)
    else:
        os.environ["GHANET_ENGINE_CACHE"] = old


@pytest.fixture(scope="session")
def synth_slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic-slides")


@pytest.fixture(scope="session")
def make_synthetic_slide(synth_slide_dir: Path) -> Callable[..., Path]:
    """``make_synthetic_slide(name, width, height, **kwargs)`` -> path; cached per session by name.

    kwargs go to :func:`ghanet_pipeline.wsi.synthetic.write_synthetic_slide` (mpp, phenotype, seed,
    metadata, blank, level_factor ...). Calling twice with the same name returns the first file.
    """
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    made: dict[str, Path] = {}

    def make(name: str, width: int, height: int, **kwargs) -> Path:
        if name not in made:
            made[name] = write_synthetic_slide(synth_slide_dir / name, width, height, **kwargs)
        return made[name]

    return make


@pytest.fixture(scope="session")
def synthetic_slide_20x(make_synthetic_slide) -> Path:
    """2048 x 2048 px at 0.5 um/px (Aperio-like, 4x pyramid), seed 5, phenotype 0.3."""
    px = int(SYNTH_SIZE_UM / 0.5)
    return make_synthetic_slide("synth20x.svs", px, px, mpp=0.5, phenotype=0.3, seed=SYNTH_SEED)


@pytest.fixture(scope="session")
def synthetic_slide_40x(make_synthetic_slide) -> Path:
    """The same tissue as ``synthetic_slide_20x`` scanned at 40x: 4096 x 4096 px at 0.25 um/px."""
    px = int(SYNTH_SIZE_UM / 0.25)
    return make_synthetic_slide("synth40x.svs", px, px, mpp=0.25, phenotype=0.3, seed=SYNTH_SEED)


#: the real MCAT-format TCGA-LUAD table, its gene families and 5-fold splits (beside the checkout)
LUAD_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/mcat"


@pytest.fixture(scope="session")
def luad() -> Path:
    """Folder of the real LUAD MCAT table (tcga_luad_all_clean.csv.zip, signatures.csv, splits_tcga_luad/);
    skips the test when it is absent."""
    if not (LUAD_DIR / "tcga_luad_all_clean.csv.zip").is_file():
        pytest.skip(f"the real LUAD MCAT table was not found in {LUAD_DIR}")
    return LUAD_DIR


@pytest.fixture(scope="session")
def luad_rows(luad: Path):
    """The LUAD table's rows, every column as text (``demo.gdcdownload.read_mcat_rows``)."""
    from ghanet_pipeline.demo.gdcdownload import read_mcat_rows

    return read_mcat_rows(luad / "tcga_luad_all_clean.csv.zip")


@pytest.fixture(scope="session")
def real_slide() -> Path:
    """Path of the real CMU-1-Small-Region.svs; skips the test when it is absent."""
    if not REAL_SLIDE.is_file():
        pytest.skip(f"real test slide not found at {REAL_SLIDE}")
    return REAL_SLIDE


# ---- workflow tests: the tiny synthetic cohort and how to run / check the workflow on it ----------------

def run_snakemake(*args: str, cwd: Path = REPO, timeout: float = 900,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the venv's snakemake (its bin/ first on PATH, so jobs find the same `ghanet`)."""
    base = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(SNAKEMAKE), *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def workflow_config(tmp: Path, path: Path | None = None, **over: object) -> Path:
    """Workflow config for the cohort in ``tmp`` (CPU only, random weights, 3 folds x 2 epochs), written to
    ``path`` (default tmp/config.yaml). ``over``: top-level values; dicts update that section."""
    cfg = {"out": str(tmp / "out"), "manifest": str(tmp / "manifest.csv"),
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


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 cases (+2 held-out) with 768 px synthetic slides carrying the phenotype, MCAT table, families.

    Inputs only: each test writes its outputs to its own folder (``workflow_config(..., out=...)``)."""
    from ghanet_pipeline.demo.cohort import make_cohort, write_cohort_tables
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    tmp = tmp_path_factory.mktemp("wf")
    cohort = make_cohort(n_cases=12, seed=3, second_slide_fraction=0.0)
    write_cohort_tables(cohort, tmp, table_name="genomics_table.csv")
    (tmp / "slides").mkdir()
    rows = []
    for i, r in enumerate(cohort.clinical.itertuples()):
        write_synthetic_slide(tmp / "slides" / f"{r.slide_id}.tif", 768, 768, phenotype=float(r.phenotype), seed=i)
        rows.append([r.slide_id, f"slides/{r.slide_id}.tif", r.case_id])
    write_csv(tmp / "manifest.csv", ["slide_id", "path", "case_id"], rows)
    new = []
    for i, ph in enumerate((0.1, 0.9)):
        write_synthetic_slide(tmp / "slides" / f"NEW-{i}.tif", 768, 768, phenotype=ph, seed=100 + i)
        new.append([f"NEW-{i}", f"slides/NEW-{i}.tif", f"NEW-{i}"])
    write_csv(tmp / "holdout.csv", ["slide_id", "path", "case_id"], new)
    return tmp


def check_workflow_outputs(cohort: Path, out: Path, folds: int = 3, run: str = "wf", epochs: int = 2) -> None:
    """The outputs a finished workflow run on ``tiny_cohort`` must have: one complete bag per slide whose
    rows are segment's grid, every fold trained, the pooled report over all folds, risks for the new slides."""
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


@pytest.fixture(autouse=True)
def restored_registries():
    """Encoders and models registered by a test are removed after it (the registries are process-wide)."""
    import ghanet_pipeline.models  # noqa: F401  (built-in entries first, so that they are kept)
    from ghanet_pipeline.features.encoders import ENCODERS
    from ghanet_pipeline.models import MODELS

    with ENCODERS.restoring(), MODELS.restoring():
        yield
@pytest.fixture(scope="session")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small real run (train G-HANet + ABMIL, predict two slides, a planted attention patch) and its
    report, built once per session (tests/reportkit.py)."""
    import torch
    from reportkit import build_small_run

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_small_run(tmp_path_factory.mktemp("report-run"))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: on 2 cores shared with other processes it is the fastest
    (OpenMP threads spin otherwise); the previous count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_interrupted_after_epoch(epoch: int, *train_cv_args, **train_cv_kwargs) -> None:
    """Run ``train_cv`` and stop it (like Ctrl-C) as soon as ``epoch`` is finished; asserts it did stop."""
    from ghanet_pipeline.training.cv import train_cv

    class Stop(KeyboardInterrupt):
        pass

    def interrupt(kind: str, **info: object) -> None:
        if kind == "epoch" and info["epoch"] == epoch:
            raise Stop()

    with pytest.raises(Stop):
        train_cv(*train_cv_args, progress=interrupt, **train_cv_kwargs)
