"""Benchmark: build time and size of one report slide page (deep-zoom pyramid + layers + gallery + HTML).

Usage:
    python benchmarks/bench_report.py [--size 60672] [--repeats 3] [--workers 1,2] [--max-mpp 1.0]
                                      [--cache /tmp/ghanet-bench-report]

A synthetic Aperio-like 20x slide (``--size`` x ``--size`` level-0 px at 0.5 um/px, pyramid levels 1, 4, 16,
tiled JPEG) is written once and cached with its ``segment`` outputs (the default size gives about 20,000
patches of 256 px) and a patch-score GeoJSON as ``predict --heatmaps`` writes it (morphology attention and
six families, random values: the build does not depend on them). Each measurement is a whole process
that builds the slide's page from scratch (``report.slidepage.slide_page``: pyramid down to ``--max-mpp``,
layer data, top-patch gallery, page), and one that rebuilds it with the finished pyramid reused.
Configurations are interleaved over the repeats. Prints the CPU, the load average before and after, and
a markdown table of min / median seconds and the page's size on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAMILIES = ["Tumor Suppression", "Oncogenesis", "Protein Kinases", "Cellular Differentiation", "Transcription",
            "Cytokines and Growth"]


def cpu() -> str:
    """The CPU model (as ``ghanet doctor`` reads it), core count and the vector extensions that matter."""
    from ghanet_pipeline.env.runtime import cpu_info

    info = cpu_info()
    flags = " ".join(f for f in ("avx2", "avx512f", "amx_tile") if f in info.flags)
    return f"{info.model} ({os.cpu_count()} cores; {flags or 'no avx2/avx512/amx'})"


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
    out = Path(args.cache) / f"report-w{workers}"
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--measure", json.dumps(info), "--out", str(out), "--workers", str(workers),
           "--max-mpp", str(args.max_mpp)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=60672)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--max-mpp", type=float, default=1.0)
    ap.add_argument("--cache", default="/tmp/ghanet-bench-report")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure), Path(args.out), int(args.workers), args.max_mpp)))
        return
    info = prepare(Path(args.cache), args.size)
    workers = [int(w) for w in args.workers.split(",")]
    print(f"CPU: {cpu()}\nload before: {os.getloadavg()}")
    print(f"slide: {args.size} x {args.size} px at 0.5 um/px, {info['n_patches']} patches; viewer to {args.max_mpp} um/px")
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):  # interleaved: every configuration once per round
        for w in workers:
            runs.setdefault(f"build, {w} worker(s)", []).append(run_one(args, info, w, fresh=True))
            runs.setdefault(f"rebuild, pyramid reused, {w} worker(s)", []).append(run_one(args, info, w, fresh=False))
    print(f"load after: {os.getloadavg()}\n")
    print("| page build | min s | median s | pyramid s (median) | tiles | pyramid MB | data.js MB | gallery kB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        r0 = rs[0]
        print(f"| {name} | {min(secs):.1f} | {statistics.median(secs):.1f} | "
              f"{statistics.median(r['pyramid_s'] for r in rs):.1f} | {r0['tiles']} | {r0['pyramid_bytes'] / 1e6:.1f} | "
              f"{r0['data_js_bytes'] / 1e6:.2f} | {r0['gallery_bytes'] / 1e3:.0f} |")


if __name__ == "__main__":
    main()
