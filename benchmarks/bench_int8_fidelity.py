"""int8 fidelity on a real slide: what each quantization technique does to the features (docs/fidelity.md).

On ``--slide`` (the real CMU-1-Small-Region.svs in this project's tests), as the demo does it: segment
with defaults, ``calibrate-encoder --weights random:0 --patches 128`` (BatchNorm statistics and
per-channel standardisation from the slide's own patches), then OpenVINO fp32 IR of the calibrated
encoder. Each named recipe (:class:`ghanet_pipeline.features.engines.int8.Recipe` plus the calibration
set) quantizes that IR with NNCF and is compared with PyTorch fp32 features (``engines.agreement``) on
three patch sets of the slide:

* ``bag``: the patches of its default grid (what ``extract-features`` embeds; the int8 calibration
  sample of a one-slide cohort is these same patches);
* ``grid88``: every cell of the 256 px grid, background included (88 patches);
* ``dense``: ``--dense`` tissue patches on a 64 px stride (overlapping, none on the grid: a harder set,
  neighbours differ little, so the spread across patches is small).

Recipes whose name ends in ``_dense`` calibrate on 128 dense patches of another stride offset (more
calibration patches than the one-slide grid has); recipes with accuracy control (``max_error``: ``default`` and
``accuracy_control``) validate on those 128 patches. Records (bench ``int8_fidelity``) one row per recipe and
set: error / spread and distance-rank correlation (``engines.agreement``), the 1st percentile and median of the
per-patch cosine, and the seconds the quantization took; ``<work>/int8_fidelity.json`` keeps every figure.

    python -m benchmarks.bench_int8_fidelity --slide CMU-1-Small-Region.svs [--recipes a,b] [--dense N] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Bench, add_record_args

#: plain NNCF defaults, every field spelled out (a field left out would take Recipe's own default, not NNCF's)
#: (``float_ops`` fp32: this benchmark compares quantization techniques with every float operation in fp32; on
#: CPUs with bf16, extract-features then decides per model whether they may compute in bf16, int8.build)
BASE = {"preset": "performance", "bias_correction": "fast", "fp32_convs": (), "ranges": "minmax", "channel_alignment": False,
        "max_error": None, "float_ops": "fp32"}
RECIPES: dict[str, dict] = {
    "plain": BASE,
    "plain_dense": BASE,
    "full_bias_correction": {**BASE, "bias_correction": "full"},
    "mixed_preset": {**BASE, "preset": "mixed"},
    "first_conv_fp32": {**BASE, "fp32_convs": (0,)},
    "last_block_fp32": {**BASE, "fp32_convs": (-3, -2, -1)},
    "quantile_ranges": {**BASE, "ranges": "quantile"},
    "histogram_ranges": {**BASE, "ranges": "histogram"},
    "channel_alignment": {**BASE, "channel_alignment": True},
    "accuracy_control": {**BASE, "max_error": 0.10},
    "default": {},  # the Recipe() extract-features uses (float operations in fp32, as everywhere here)
}


def patch_sets(slide: Path, coords: np.ndarray, n_dense: int) -> dict[str, np.ndarray]:
    from ghanet_pipeline.wsi.slide import Slide

    with Slide(slide) as s:
        plan = s.plan(0.5, 256)
        w, h = s.dimensions
        step = plan.patch_size_level0

        def read(cc):
            return np.stack([s.read_patch(plan, int(x), int(y)) for x, y in cc])

        full = [(x, y) for y in range(0, h - step + 1, step) for x in range(0, w - step + 1, step)]
        sets = {"bag": read(coords), "grid88": read(full)}
        for name, off in (("dense", 16), ("dense_calib", 48)):
            cc = [(x, y) for y in range(off, h - step + 1, 64) for x in range(off, w - step + 1, 64)]
            arr = read(cc)
            sat = arr.max(-1).astype(int) - arr.min(-1).astype(int)
            keep = np.flatnonzero((sat > 15).mean(axis=(1, 2)) >= 0.5)
            keep = np.random.default_rng(0).permutation(keep)[:n_dense if name == "dense" else 128]
            sets[name] = arr[np.sort(keep)]
    return sets


def reference(slide: Path, work: Path, n_dense: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], object]:
    """Segment and calibrate as the demo does; the patch sets, their PyTorch fp32 features (every set but the
    dense calibration set) and the calibrated encoder's OpenVINO fp32 IR."""
    import torch

    from ghanet_pipeline.features.calibrate import calibrate_encoder
    from ghanet_pipeline.features.encoders import load_encoder, preprocess
    from ghanet_pipeline.features.engines.openvino_runner import convert
    from ghanet_pipeline.wsi.inputs import SlideSpec
    from ghanet_pipeline.wsi.segment import SegmentParams, load_coords, segment_paths, segment_slide

    spec = SlideSpec(slide.stem, slide, slide.stem)
    segment_slide(spec, work, SegmentParams())
    coords, _ = load_coords(segment_paths(work, spec.slide_id)["coords"])
    weights = calibrate_encoder([spec], work, weights="random:0", n_patches=128).path
    enc = load_encoder("resnet50_trunc", str(weights))
    sets = patch_sets(slide, coords, n_dense)
    with torch.inference_mode():
        ref = {k: torch.cat([enc.model(preprocess(torch.from_numpy(v[i:i + 32]), enc.spec))
                             for i in range(0, len(v), 32)]).numpy() for k, v in sets.items() if k != "dense_calib"}
    return sets, ref, convert(enc, 256)


def measure(bench: Bench, recipes: list[str], sets: dict[str, np.ndarray], ref: dict[str, np.ndarray], fp32,  # noqa: ANN001
            threads: int) -> dict[str, dict]:
    """Quantize the IR with each recipe and compare its features with the reference on every set (one row each)."""
    import openvino as ov

    from ghanet_pipeline.features.engines.agreement import agreement
    from ghanet_pipeline.features.engines.int8 import Recipe, quantize
    from ghanet_pipeline.features.engines.openvino_runner import run_compiled

    core = ov.Core()
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    results = {}
    for name in recipes:
        calib = sets["dense_calib"] if name.endswith("_dense") else sets["bag"]
        t = time.perf_counter()
        q = quantize(fp32, calib, Recipe(**RECIPES[name]), validation=sets["dense_calib"])
        secs = time.perf_counter() - t
        compiled = core.compile_model(q, "CPU", cfg)
        for set_name, feats in ref.items():
            a = agreement(feats, run_compiled(compiled, sets[set_name]))
            results[f"{name}/{set_name}"] = a
            bench.row(recipe=name, calibration_patches=len(calib), set=set_name, error_spread=float(a["error_spread"]),
                      distance_rank=float(a["distance_rank"]), cosine_p1=float(a["cosine"]["p1"]),
                      cosine_median=float(a["cosine"]["p50"]), quantize_seconds=round(secs, 1))
            print(f"{name} / {set_name}: error / spread {a['error_spread']:.3f}, distance rank "
                  f"{a['distance_rank']:.4f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", required=True, type=Path)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--dense", type=int, default=256, help="dense tissue patches compared")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "ghanet-bench-int8-fidelity"))
    add_record_args(ap)
    args = ap.parse_args(argv)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if unknown := sorted(set(recipes) - set(RECIPES)):
        ap.error(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    units = {"calibration_patches": "", "error_spread": "", "distance_rank": "", "cosine_p1": "", "cosine_median": "",
             "quantize_seconds": "s"}
    labels = {"error_spread": "error / spread", "distance_rank": "distance rank", "cosine_p1": "cosine p1",
              "quantize_seconds": "quantization"}
    with Bench("int8_fidelity", f"int8 vs PyTorch fp32 features of {args.slide.name} per quantization recipe", args,
               units=units, labels=labels) as bench:
        sets, ref, fp32 = reference(args.slide, work, args.dense)
        bench.note(f"{args.slide.name}: bag {len(sets['bag'])} patches, grid88 {len(sets['grid88'])}, dense "
                   f"{len(sets['dense'])}; encoder calibrated on 128 patches (random:0); reference PyTorch fp32")
        results = measure(bench, recipes, sets, ref, fp32, args.threads)
    (work / "int8_fidelity.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
