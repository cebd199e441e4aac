"""Shared test fixtures: small synthetic slides (built once per session) and the real CMU slide."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

#: the real Aperio test slide (OpenSlide's CMU-1-Small-Region, 2220x2967 px at 0.499 um/px)
REAL_SLIDE = Path(__file__).resolve().parents[1].parent / "shared/data/CMU-1-Small-Region.svs"

#: physical size of the synthetic test tissue: 1024 x 1024 um (2048 px at 20x, 4096 px at 40x)
SYNTH_SIZE_UM = 1024
SYNTH_SEED = 5


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


@pytest.fixture(scope="session")
def real_slide() -> Path:
    """Path of the real CMU-1-Small-Region.svs; skips the test when it is absent."""
    if not REAL_SLIDE.is_file():
        pytest.skip(f"real test slide not found at {REAL_SLIDE}")
    return REAL_SLIDE
