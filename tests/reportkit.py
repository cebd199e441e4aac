"""Helpers of the report tests: a small real run (train + predict + report) and headless Chromium.

The run is real but tiny: a 12-case synthetic cohort, genomics preprocessing (2 folds), G-HANet and
ABMIL trained for 2 epochs on 8-dimensional synthetic bags, and ``predict --heatmaps`` on two
synthetic slides with a registered 8-dimensional test encoder (milliseconds per patch). Then one
patch of slide NEW-A gets almost all of the morphology attention (planted), and the report is built.
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

TINY_ENCODER = "tiny_report_encoder"
TINY_DIM = 8
ENC = {"encoder": TINY_ENCODER, "weights_sha256": "random:0", "input_size": 32, "target_mpp": 0.5, "patch_size": 256}
#: Chromium flags of every test browser: no network of its own, no GPU, no first-run UI (Playwright adds
#: --headless and a fresh --user-data-dir itself)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PLANTED_SLIDE = "NEW-A"


def register_tiny_encoder() -> None:
    """An 8-d encoder (a strided 1x1-ish conv + pooling) so that predict runs in milliseconds per patch."""
    from ghanet_pipeline.features import encoders

    if TINY_ENCODER in encoders.ENCODERS:
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

    encoders.register_encoder(encoders.EncoderSpec(
        name=TINY_ENCODER, dim=TINY_DIM, build=build, trunk=trunk, required_prefixes=("conv.",),
        hub_files=("tiny-report-*.pth",), how_to_get="(test encoder)"))


def _bags(cohort: Any, folder: Path) -> None:
    from ghanet_pipeline.demo.bags import phenotype_features
    from ghanet_pipeline.features.bags import write_bag

    rng = np.random.default_rng(5)
    for row in cohort.clinical.itertuples(index=False):
        f, c, _ = phenotype_features(float(row.phenotype), int(rng.integers(10, 21)), rng, dim=TINY_DIM)
        attrs = {"schema_version": 1, "slide_id": row.slide_id, **ENC, "patch_size_level0": 512, "level0_mpp": 0.25,
                 "source_name": f"{row.slide_id}.svs", "source_bytes": 1, "ghanet_version": "test"}
        write_bag(folder / f"{row.slide_id}.h5", f, c, attrs)


def plant_attention(geojson: Path) -> dict[str, int]:
    """Give one interior patch of the slide 95 % of the attention (the rest share 5 %); return it."""
    from ghanet_pipeline.inference.qupath import write_patch_geojson
    from ghanet_pipeline.report.layers import read_scores_geojson

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
    from ghanet_pipeline.demo.cohort import make_cohort, write_cohort_tables
    from ghanet_pipeline.genomics.config import GenomicsConfig
    from ghanet_pipeline.genomics.pipeline import preprocess_genomics
    from ghanet_pipeline.inference.config import PredictConfig
    from ghanet_pipeline.inference.predict import predict_cases
    from ghanet_pipeline.report.build import ReportConfig, build_report
    from ghanet_pipeline.training.config import TrainConfig
    from ghanet_pipeline.training.cv import train_cv
    from ghanet_pipeline.wsi.inputs import SlideSpec
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

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
