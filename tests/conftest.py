"""Fixtures shared by the whole suite (helpers that test modules import are in ghanet_pipeline/testing/).

- ``make_synthetic_slide`` / ``synthetic_slide_20x`` / ``synthetic_slide_40x``: small synthetic slides, made
  once per session; ``real_slide``: the real CMU-1-Small-Region.svs (the test skips when it is absent).
- ``synthetic_study``: the synthetic cohort -> preprocess-genomics -> bags, built once per session and shared
  read-only (a test that changes it fails; copy it first); ``trained_run``: two folds trained on it.
- ``workflow_cohort``: the tiny cohort with real slides of the workflow tests (tests/e2e/).
- ``luad`` / ``luad_rows``: the real TCGA-LUAD MCAT table beside the checkout (the test skips when absent).
- ``report_run``: a small trained + predicted run and its report (tests/report/), built once per session.
- autouse: ``torch_threads`` (torch's thread count for every test: 1, or ``@pytest.mark.threads(n)``),
  ``restored_registries`` (encoders and models a test registers are removed after it) and, per session,
  ``_shared_engine_cache`` (one OpenVINO conversion cache for the whole run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ghanet_pipeline.testing import SyntheticStudy, make_synthetic_study, make_workflow_cohort, snapshot, train_tiny

#: under pytest-xdist (`make test`: one worker per core), the cores each worker may use: tests run with at most
#: this many torch threads, and the processes they start inherit OMP_NUM_THREADS=this (unless set), so that
#: workers and their subprocesses do not oversubscribe the cores (OpenMP threads spin while they wait)
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CORES_PER_WORKER = max(1, len(os.sched_getaffinity(0)) // XDIST_WORKERS)
if XDIST_WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(CORES_PER_WORKER))

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


# ---- the synthetic study and the workflow cohort ---------------------------------------------------------

@pytest.fixture(scope="session")
def synthetic_study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    """24 synthetic cases (seed 3; the phenotype drives hazard and planted genes), their tables, 3 genomics
    folds (t-test) and one 1024-wide bag of 20-40 patches per slide. Shared by every test of the session:
    read-only (``_shared_folders_unchanged`` fails a test that changed a file in it; copy what you change)."""
    study = make_synthetic_study(tmp_path_factory.mktemp("study"), n_cases=24, seed=3, n_patches=(20, 40), folds=3)
    _AS_BUILT[study.root] = snapshot(study.root, content=False)
    return study


@pytest.fixture(scope="session")
def trained_run(synthetic_study: SyntheticStudy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An out folder holding ``train/tiny``: folds 0 and 1 of ``synthetic_study`` trained with
    ``ghanet_pipeline.testing.TINY_TRAIN``. Read-only like the study: copy the folder before changing it or
    training into it (``shutil.copytree(trained_run, tmp_path / "out")``)."""
    out = tmp_path_factory.mktemp("trained")
    train_tiny(synthetic_study, out)
    _AS_BUILT[out] = snapshot(out, content=False)
    return out


#: snapshot (sizes, mtimes) of each shared folder as it was built
_AS_BUILT: dict[Path, dict] = {}
#: the session fixtures shared read-only, and the folder of each
_SHARED = {"synthetic_study": lambda study: study.root, "trained_run": lambda out: out,
           "report_run": lambda run: run["out"]}


@pytest.fixture(autouse=True)
def _shared_folders_unchanged(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used ``synthetic_study``, ``trained_run`` or ``report_run`` (directly or through
    another fixture): their folders are as built."""
    yield
    for name, folder_of in _SHARED.items():
        if name in request.fixturenames:
            root = folder_of(request.getfixturevalue(name))
            assert snapshot(root, content=False) == _AS_BUILT[root], \
                f"{request.node.nodeid} (or a fixture it uses) changed the shared {name}: copy what you change"


@pytest.fixture(scope="session")
def workflow_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 cases (+2 held-out) with 768 px synthetic slides carrying the phenotype, MCAT table, families
    (``ghanet_pipeline.testing.make_workflow_cohort``). Inputs only: each run writes to its own folder."""
    return make_workflow_cohort(tmp_path_factory.mktemp("wf"))


# ---- process-wide state ----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def torch_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """torch's thread count for each test: 1 (on 2 shared cores the fastest for tiny tensors: OpenMP threads
    spin otherwise), or n with ``@pytest.mark.threads(n)`` (at most the cores per xdist worker); the previous count is restored afterwards.
    The one place the suite sets it (processes a test starts choose their own: ``--threads``)."""
    import torch

    marker = request.node.get_closest_marker("threads")
    want = min(marker.args[0], CORES_PER_WORKER) if marker else 1
    before = torch.get_num_threads()
    if before != want:
        torch.set_num_threads(want)
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


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
    report, built once per session (``ghanet_pipeline.testing.report.build_small_run``). Read-only like the
    study: copy ``run["out"]`` before changing it."""
    import torch

    from ghanet_pipeline.testing.report import build_small_run

    before = torch.get_num_threads()  # a session fixture is built before the test's torch_threads applies
    torch.set_num_threads(1)
    try:
        run = build_small_run(tmp_path_factory.mktemp("report-run"))
    finally:
        torch.set_num_threads(before)
    _AS_BUILT[run["out"]] = snapshot(run["out"], content=False)
    return run
