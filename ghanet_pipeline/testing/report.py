"""Helpers of the report tests (tests/report/): a small real run (train + predict + report) and headless Chromium.

The run is real but tiny: a 12-case synthetic cohort, genomics preprocessing (2 folds), G-HANet and
ABMIL trained for 2 epochs on 8-dimensional synthetic bags, and ``predict --heatmaps`` on two
synthetic slides with the registered 8-dimensional test encoder (:data:`ghanet_pipeline.testing.TINY_ENCODER`,
milliseconds per patch). Then one patch of slide NEW-A gets almost all of the morphology attention
(planted), and the report is built. tests/conftest.py builds it once per session (fixture ``report_run``).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import TINY_DIM, TINY_ENC, register_tiny_encoder, tiny_bag_attrs

#: Chromium flags of every test browser: no network of its own, no GPU, no first-run UI (Playwright adds
#: --headless and a fresh --user-data-dir itself)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PLANTED_SLIDE = "NEW-A"


def _bags(cohort: Any, folder: Path) -> None:
    from ..demo.bags import phenotype_features
    from ..features.bags import write_bag

    rng = np.random.default_rng(5)
    for row in cohort.clinical.itertuples(index=False):
        f, c, _ = phenotype_features(float(row.phenotype), int(rng.integers(10, 21)), rng, dim=TINY_DIM)
        write_bag(folder / f"{row.slide_id}.h5", f, c, tiny_bag_attrs(row.slide_id, TINY_ENC))


def plant_attention(geojson: Path) -> dict[str, int]:
    """Give one interior patch of the slide 95 % of the attention (the rest share 5 %); return it."""
    from ..inference.qupath import write_patch_geojson
    from ..report.layers import read_scores_geojson

    coords, side, meas = read_scores_geojson(geojson)
    have = {tuple(c) for c in coords.tolist()}
    inner = [i for i, (x, y) in enumerate(coords.tolist())
             if all((x + dx, y + dy) in have for dx, dy in ((side, 0), (-side, 0), (0, side), (0, -side)))]
    p = inner[len(inner) // 2] if inner else 0
    att = np.full(len(coords), 0.05 / max(1, len(coords) - 1))
    att[p] = 0.95
    meas["attention"] = att
    write_patch_geojson(geojson, coords, side, meas, slide_id=PLANTED_SLIDE)
    return {"index": int(p), "x": int(coords[p][0]), "y": int(coords[p][1]), "size": int(side)}


def build_small_run(root: Path) -> dict[str, Any]:
    """Train, predict and report into ``root/out`` (see module docstring); returns paths and the plant."""
    from ..demo.cohort import make_cohort, write_cohort_tables
    from ..genomics.config import GenomicsConfig
    from ..genomics.pipeline import preprocess_genomics
    from ..inference.config import PredictConfig
    from ..inference.predict import predict_cases
    from ..report.build import ReportConfig, build_report
    from ..training.config import TrainConfig
    from ..training.cv import train_cv
    from ..wsi.inputs import SlideSpec
    from ..wsi.synthetic import write_synthetic_slide

    register_tiny_encoder()
    out, data = root / "out", root / "data"
    cohort = make_cohort(n_cases=12, seed=0, second_slide_fraction=0.0)
    tables = write_cohort_tables(cohort, data, table_name="genomics_table.csv")
    gen = preprocess_genomics(GenomicsConfig(table=tables["table"], families=tables["families"], folds=2), out)
    assert len(gen.results) == 2 and all(r.ok for r in gen.results), gen.results
    feats = out / "features" / "tiny"
    _bags(cohort, feats)
    for model in ("ghanet", "abmil"):
        res = train_cv(feats, out / "genomics", out, TrainConfig(model=model, epochs=2, dim=16, accum=4, device="cpu"),
                       run_name=model)
        assert len(res.folds) == 2 and all(f.ok for f in res.folds), res.folds
    specs = []
    for sid, px, ph, seed in ((PLANTED_SLIDE, 1536, 0.8, 11), ("NEW-B", 1024, 0.2, 12)):
        path = write_synthetic_slide(data / "slides" / f"{sid}.tif", px, px, mpp=0.5, phenotype=ph, seed=seed)
        specs.append(SlideSpec(slide_id=sid, path=path, case_id=sid, raw_slide_id=sid))
    run = predict_cases(specs, out / "train" / "ghanet",
                        PredictConfig(out=out, heatmaps=True, device="cpu", weights="random"))
    assert all(c.status == "done" for c in run.cases), [c.message for c in run.cases]
    planted = plant_attention(out / "predict" / "heatmaps" / PLANTED_SLIDE / f"{PLANTED_SLIDE}.geojson")
    result = build_report(out, ReportConfig(workers=1, n_boot=200))
    return {"out": out, "report": out / "report", "result": result, "planted": planted, "specs": specs}


def chromium_path() -> str | None:
    """The Chromium to test with: $GHANET_CHROMIUM, else Debian's ``chromium`` on the PATH."""
    return os.environ.get("GHANET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) for the duration; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
