"""Benchmark: seconds per slide for `segment` (thumbnail read + tissue mask + patch grid + outputs).

Usage: python benchmarks/bench_segment.py [--size 40000] [--repeats 3] [--cache /tmp/ghanet-bench]

A large synthetic 20x slide (default 40,000 x 40,000 px level 0, ~1 GB of pixels per channel) is
written once and cached; each repeat runs the full `segment_slide` (with overwrite) and the steps
separately. Prints a markdown table with min / median over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghanet_pipeline.wsi.inputs import SlideSpec  # noqa: E402
from ghanet_pipeline.wsi.segment import SegmentParams, segment_slide  # noqa: E402
from ghanet_pipeline.wsi.slide import Slide  # noqa: E402
from ghanet_pipeline.wsi.synthetic import write_synthetic_slide  # noqa: E402
from ghanet_pipeline.wsi.tiling import patch_grid  # noqa: E402
from ghanet_pipeline.wsi.tissue import detect_tissue  # noqa: E402


def timed(fn, repeats: int) -> tuple[list[float], object]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def row(name: str, times: list[float], note: str = "") -> str:
    return f"| {name} | {min(times):.3f} | {statistics.median(times):.3f} | {len(times)} | {note} |"


def bench_slide(path: Path, slide_id: str, repeats: int, out: Path) -> list[str]:
    params = SegmentParams()
    spec = SlideSpec(slide_id=slide_id, path=path, case_id=slide_id)
    rows = []
    times, res = timed(lambda: segment_slide(spec, out, params, overwrite=True), repeats)
    with Slide(path) as s:
        w, h = s.dimensions
        ds_req = params.thumbnail_downsample * params.target_mpp / s.mpp
        t_thumb, (thumb, ds) = timed(lambda: s.thumbnail(ds_req), repeats)
        plan = s.plan(params.target_mpp, params.patch_size)
        dims = s.dimensions
        thumb_mpp = ds * s.mpp
    t_tissue, tissue = timed(lambda: detect_tissue(thumb, thumb_mpp, params.tissue_params()), repeats)
    t_grid, grid = timed(lambda: patch_grid(tissue.mask, ds, dims, plan.patch_size_level0, params.min_tissue),
                         repeats)
    label = f"{slide_id} ({w}x{h} px)"
    rows.append(row(f"{label}: segment_slide, all outputs", times,
                    f"{res.metrics['patches']} patches, {res.metrics['tissue_mm2']:.1f} mm² tissue"))
    rows.append(row(f"{label}: thumbnail read", t_thumb, f"{thumb.shape[1]}x{thumb.shape[0]} px at {thumb_mpp:.1f} um/px"))
    rows.append(row(f"{label}: tissue mask + contours", t_tissue, f"{len(tissue.polygons)} pieces"))
    rows.append(row(f"{label}: patch grid (vectorised)", t_grid,
                    f"{grid.n_cols}x{grid.n_rows} = {grid.n_cols * grid.n_rows} cells"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=40_000, help="level-0 side of the large synthetic slide (px)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ghanet-bench")
    ap.add_argument("--real-slide", type=Path, default=None,
                    help="also time a real slide (e.g. OpenSlide's CMU-1-Small-Region.svs)")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    big = args.cache / f"synthetic_{args.size}_seed1.svs"
    lines = ["| step | min s | median s | repeats | notes |", "|---|---|---|---|---|"]
    if not big.is_file():
        t0 = time.perf_counter()
        write_synthetic_slide(big, args.size, args.size, mpp=0.5, phenotype=0.3, seed=1)
        gen = time.perf_counter() - t0
        print(f"wrote {big} ({big.stat().st_size / 1e6:.0f} MB) in {gen:.1f} s", file=sys.stderr)
        lines.append(row(f"write synthetic {args.size}x{args.size} slide (once, cached)", [gen],
                         f"{big.stat().st_size / 1e6:.0f} MB"))
    small = args.cache / "synthetic_4000_bench.svs"
    t_small, _ = timed(lambda: write_synthetic_slide(small, 4000, 4000, mpp=0.5, phenotype=0.3, seed=2), args.repeats)
    lines.append(row("write synthetic 4000x4000 slide", t_small))
    with tempfile.TemporaryDirectory() as tmp:
        lines += bench_slide(big, "synthetic-large", args.repeats, Path(tmp))
        if args.real_slide is not None:
            lines += bench_slide(args.real_slide, args.real_slide.name.split(".")[0], args.repeats, Path(tmp))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
