"""Benchmark: build time and size of one report slide page (deep-zoom pyramid + layers + gallery + HTML).

Usage:
    python -m benchmarks.bench_report [--size 60672] [--repeats 3] [--workers 1,2] [--max-mpp 1.0]
                                      [--cache /tmp/ghanet-bench-report]

A synthetic Aperio-like 20x slide (``--size`` x ``--size`` level-0 px at 0.5 um/px, pyramid levels 1, 4, 16,
tiled JPEG) is written once and cached with its ``segment`` outputs (the default size gives about 20,000
patches of 256 px) and a patch-score GeoJSON as ``predict --heatmaps`` writes it (morphology attention and
six families, random values: the build does not depend on them). Each measurement is a whole process
that builds the slide's page from scratch (``report.slidepage.slide_page``: pyramid down to ``--max-mpp``,
layer data, top-patch gallery, page), and one that rebuilds it with the finished pyramid reused.
Configurations are interleaved over the repeats. Record: bench ``report`` (min / median seconds, pyramid
seconds, tiles and the page's size on disk).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from benchmarks.harness import Bench, add_record_args, call_worker, emit, interleave, stats

MODULE = "benchmarks.bench_report"
FAMILIES = ["Tumor Suppression", "Oncogenesis", "Protein Kinases", "Cellular Differentiation", "Transcription",
            "Cytokines and Growth"]


def prepare(cache: Path, size: int) -> dict:
    """Slide, coords, tissue outline and a score GeoJSON (cached by size)."""
    import numpy as np

    from ghanet_pipeline.core.ids import sanitize_id
    from ghanet_pipeline.inference.qupath import write_patch_geojson
    from ghanet_pipeline.wsi.inputs import SlideSpec
    from ghanet_pipeline.wsi.segment import SegmentParams, load_coords, segment_slide
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    root = cache / f"s{size}"
    root.mkdir(parents=True, exist_ok=True)
    slide = root / "slide.tif"
    if not slide.is_file():
        print(f"writing the synthetic slide {slide} ({size} x {size} px; once) ...", flush=True)
        write_synthetic_slide(slide, size, size, mpp=0.5, phenotype=0.5, seed=3)
    coords_h5 = root / "segment" / "slide.coords.h5"
    if not coords_h5.is_file():
        segment_slide(SlideSpec(slide_id="slide", path=slide, case_id="slide"), root, SegmentParams())
    coords, attrs = load_coords(coords_h5)
    scores = root / "slide.geojson"
    if not scores.is_file():
        rng = np.random.default_rng(0)
        meas = {"attention": rng.dirichlet(np.ones(len(coords)))}
        for fam in FAMILIES:
            v = rng.random(len(coords))
            v[v < np.quantile(v, 0.8)] = 0.0
            meas[f"assoc_{sanitize_id(fam).replace(' ', '_')}"] = v / v.sum()
        write_patch_geojson(scores, coords, int(attrs["patch_size_level0"]), meas, slide_id="slide")
    return {"slide": str(slide), "coords": str(coords_h5), "tissue": str(root / "segment" / "slide.geojson"),
            "scores": str(scores), "n_patches": int(len(coords)), "width": size}


def measure(info: dict, out: Path, workers: int, max_mpp: float) -> dict:
    """One build of the page into ``out`` (a fresh report folder unless it holds a finished pyramid)."""
    from ghanet_pipeline.report.gather import SlideSource
    from ghanet_pipeline.report.layers import share_scales, slide_layers
    from ghanet_pipeline.report.pyramid import PyramidSettings
    from ghanet_pipeline.report.slidepage import slide_page
    from ghanet_pipeline.report.vendor import install

    t0 = time.perf_counter()
    src = SlideSource(slide_id="slide", case_id="slide", path=Path(info["slide"]), mpp=None,
                      scores=Path(info["scores"]), coords=Path(info["coords"]), tissue=Path(info["tissue"]))
    scores = slide_layers("slide", src.scores, src.coords, src.tissue, info["n_patches"], FAMILIES)
    share_scales([scores])
    t_layers = time.perf_counter() - t0
    install(out / "assets")
    page = slide_page(out, src, scores, {"case_id": "slide"}, PyramidSettings(max_mpp=max_mpp), workers=workers)
    total = time.perf_counter() - t0

    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size

    return {"seconds": total, "layers_s": t_layers, "pyramid_s": 0.0 if page.pyramid.reused else page.pyramid.seconds,
            "reused": page.pyramid.reused, "tiles": page.pyramid.n_tiles, "pyramid_bytes": size(out / "pyramids"),
            "data_js_bytes": size(out / "slides" / "slide" / "data.js"),
            "gallery_bytes": size(out / "slides" / "slide" / "top"), "html_bytes": size(out / "slides" / "slide.html")}


def run_one(args: argparse.Namespace, info: dict, workers: int, fresh: bool) -> dict:
    """One whole process building the page (``fresh``: into an empty report folder)."""
    out = Path(args.cache).resolve() / f"report-w{workers}"
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    result, _ = call_worker(MODULE, "--measure", json.dumps(info), "--out", out, "--workers", str(workers),
                            "--max-mpp", str(args.max_mpp))
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=60672)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--max-mpp", type=float, default=1.0)
    ap.add_argument("--cache", default="/tmp/ghanet-bench-report")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    add_record_args(ap)
    args = ap.parse_args(argv)
    if args.measure:
        emit(measure(json.loads(args.measure), Path(args.out), int(args.workers), args.max_mpp))
        return
    info = prepare(Path(args.cache).resolve(), args.size)
    configs = [(w, fresh) for w in (int(x) for x in args.workers.split(",")) for fresh in (True, False)]
    with Bench("report", f"One report slide page: {args.size} x {args.size} px at 0.5 um/px, {info['n_patches']} "
               f"patches, viewer to {args.max_mpp} um/px; whole processes, configurations interleaved", args,
               units={"seconds": "s", "pyramid_s": "s", "tiles": "tiles", "pyramid_mb": "MB", "data_js_mb": "MB",
                      "gallery_kb": "kB"}
               ) as bench:
        rounds = interleave(configs, args.repeats, lambda c, r: run_one(args, info, c[0], c[1]))
        for (w, fresh), rs in rounds.results.items():
            r0 = rs[0]
            bench.row(build=f"{'build' if fresh else 'rebuild, pyramid reused'}, {w} worker(s)",
                      seconds=stats([r["seconds"] for r in rs]), pyramid_s=stats([r["pyramid_s"] for r in rs]),
                      tiles=r0["tiles"], pyramid_mb=round(r0["pyramid_bytes"] / 1e6, 1),
                      data_js_mb=round(r0["data_js_bytes"] / 1e6, 2), gallery_kb=round(r0["gallery_bytes"] / 1e3))
        bench.note(f"{rounds.complete} interleaved rounds{' (interrupted)' if rounds.interrupted else ''}")


if __name__ == "__main__":
    main()
