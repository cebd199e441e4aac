"""Benchmark: seconds per slide for `segment` (thumbnail read + tissue mask + patch grid + outputs).

Usage: python -m benchmarks.bench_segment [--size 40000] [--repeats 3] [--cache /tmp/ghanet-bench]
       [--real-slide PATH]

A large synthetic 20x slide (default 40,000 x 40,000 px level 0, ~1 GB of pixels per channel) is
written once and cached; each repeat runs the full `segment_slide` (with overwrite) and the steps
separately. Record: bench ``segment`` (min / median over the repeats).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Bench, add_record_args, stats, timed


def bench_slide(bench: Bench, path: Path, slide_id: str, repeats: int, out: Path) -> None:
    """Rows for one slide: the whole `segment_slide`, then thumbnail read, tissue mask and patch grid alone."""
    from ghanet_pipeline.wsi.inputs import SlideSpec
    from ghanet_pipeline.wsi.segment import SegmentParams, segment_slide
    from ghanet_pipeline.wsi.slide import Slide
    from ghanet_pipeline.wsi.tiling import patch_grid
    from ghanet_pipeline.wsi.tissue import detect_tissue

    params = SegmentParams()
    spec = SlideSpec(slide_id=slide_id, path=path, case_id=slide_id)
    whole, res = timed(lambda: segment_slide(spec, out, params, overwrite=True), repeats)
    with Slide(path) as s:
        w, h = s.dimensions
        ds_req = params.thumbnail_downsample * params.target_mpp / s.mpp
        t_thumb, (thumb, ds) = timed(lambda: s.thumbnail(ds_req), repeats)
        plan = s.plan(params.target_mpp, params.patch_size)
        thumb_mpp = ds * s.mpp
    t_tissue, tissue = timed(lambda: detect_tissue(thumb, thumb_mpp, params.tissue_params()), repeats)
    t_grid, grid = timed(lambda: patch_grid(tissue.mask, ds, (w, h), plan.patch_size_level0, params.min_tissue), repeats)
    label = f"{slide_id} ({w}x{h} px)"
    bench.row(step=f"{label}: segment_slide, all outputs", seconds=whole,
              notes=f"{res.metrics['patches']} patches, {res.metrics['tissue_mm2']:.1f} mm² tissue")
    bench.row(step=f"{label}: thumbnail read", seconds=t_thumb,
              notes=f"{thumb.shape[1]}x{thumb.shape[0]} px at {thumb_mpp:.1f} um/px")
    bench.row(step=f"{label}: tissue mask + contours", seconds=t_tissue, notes=f"{len(tissue.polygons)} pieces")
    bench.row(step=f"{label}: patch grid (vectorised)", seconds=t_grid,
              notes=f"{grid.n_cols}x{grid.n_rows} = {grid.n_cols * grid.n_rows} cells")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=40_000, help="level-0 side of the large synthetic slide (px)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ghanet-bench")
    ap.add_argument("--real-slide", type=Path, default=None,
                    help="also time a real slide (e.g. OpenSlide's CMU-1-Small-Region.svs)")
    add_record_args(ap)
    args = ap.parse_args(argv)
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    args.cache.mkdir(parents=True, exist_ok=True)
    big = args.cache / f"synthetic_{args.size}_seed1.svs"
    with Bench("segment", "Seconds per slide for `segment`", args, units={"seconds": "s"},
               labels={"seconds": "time"}) as bench:
        if not big.is_file():
            t0 = time.perf_counter()
            write_synthetic_slide(big, args.size, args.size, mpp=0.5, phenotype=0.3, seed=1)
            gen = time.perf_counter() - t0
            print(f"wrote {big} ({big.stat().st_size / 1e6:.0f} MB) in {gen:.1f} s", file=sys.stderr)
            bench.row(step=f"write synthetic {args.size}x{args.size} slide (once, cached)", seconds=stats([gen]),
                      notes=f"{big.stat().st_size / 1e6:.0f} MB")
        small = args.cache / "synthetic_4000_bench.svs"
        t_small, _ = timed(lambda: write_synthetic_slide(small, 4000, 4000, mpp=0.5, phenotype=0.3, seed=2),
                           args.repeats)
        bench.row(step="write synthetic 4000x4000 slide", seconds=t_small)
        with tempfile.TemporaryDirectory() as tmp:
            bench_slide(bench, big, "synthetic-large", args.repeats, Path(tmp))
            if args.real_slide is not None:
                bench_slide(bench, args.real_slide, args.real_slide.name.split(".")[0], args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
