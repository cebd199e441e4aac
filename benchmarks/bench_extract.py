"""Benchmark: is patch reading hidden behind compute in `extract-features`?

Usage: python -m benchmarks.bench_extract [--patches 64] [--repeats 3] [--precisions fp32,bf16]
       [--device cpu|cuda] [--batch-size 32] [--num-workers N] [--threads N] [--resize PX]
       python -m benchmarks.bench_extract --malloc-compare      (glibc malloc settings on/off)
       python -m benchmarks.bench_extract --whole-process [...]  (= python -m benchmarks.bench_extract_process:
           whole processes vs a bare encoder and a CLAM stand-in, both precisions; the headline numbers)

On one synthetic 20x slide, with the same batch size, device and precision, measures
(a) encoder-only patches/s: the encoder on pre-made uint8 patch tensors (normalise on the device,
    forward, features back to host memory), and
(b) end-to-end patches/s: `Extractor.extract` on the same patches (DataLoader workers reading and
    decoding JPEG tiles, transform, encode, HDF5 bag write; model loading excluded),
interleaved a, b, a, b ... so that machine load affects both alike. Records (bench ``extract``) min /
median over the repeats and the ratio of medians (target >= 0.9).

--malloc-compare runs the encoder-only measurement in fresh processes alternately with glibc's
default malloc and with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` (what ghanet applies
on CPU through ``mallopt``) and records both (bench ``extract_malloc``).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Bench, add_record_args, call_worker, emit, interleave, stats

MODULE = "benchmarks.bench_extract"


def make_slide(cache: Path, n_patches: int) -> tuple[Path, Path]:
    """A synthetic slide and an output root whose segment/ holds ``n_patches`` coords of it."""
    import h5py
    import numpy as np

    from ghanet_pipeline.wsi.inputs import SlideSpec
    from ghanet_pipeline.wsi.segment import SegmentParams, segment_paths, segment_slide
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    cache.mkdir(parents=True, exist_ok=True)
    # ~40 % of the synthetic slide is tissue: 4096 px holds ~100 patches of 256 px
    side = max(4096, 256 * math.ceil(math.sqrt(n_patches / 0.3)))
    slide = cache / f"bench_extract_{side}.svs"
    if not slide.exists():
        write_synthetic_slide(slide, side, side, mpp=0.5, phenotype=0.3, seed=11)
    out = cache / f"out_{n_patches}"
    coords_path = segment_paths(out, "bench")["coords"]
    if not coords_path.exists():
        full = cache / "segment_full"
        segment_slide(SlideSpec("bench", slide, "bench"), full, SegmentParams())
        src = segment_paths(full, "bench")["coords"]
        coords_path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(src) as f, h5py.File(coords_path, "w") as g:
            c = f["coords"][()]
            if len(c) < n_patches:
                raise SystemExit(f"the synthetic slide has only {len(c)} patches; ask for fewer")
            g["coords"] = np.ascontiguousarray(c[:n_patches])
            for k, v in f.attrs.items():
                if k != "complete":
                    g.attrs[k] = v
            g.attrs["complete"] = True
    return slide, out


def encoder_only(ex, patches, batch_size: int) -> float:
    """Seconds for the encoder on pre-made uint8 tensors (device normalise, forward, result to host)."""
    import torch

    from ghanet_pipeline.features.encoders import preprocess

    cuda = ex.device.type == "cuda"
    batches = [patches[i:i + batch_size] for i in range(0, len(patches), batch_size)]
    if cuda:
        batches = [b.pin_memory() for b in batches]
        torch.cuda.synchronize(ex.device)
    amp = torch.autocast(ex.device.type, dtype=ex.amp_dtype) if ex.amp_dtype is not None else None
    t0 = time.perf_counter()
    with torch.inference_mode():
        if amp is not None:
            amp.__enter__()
        try:
            outs = [ex.model(preprocess(b.to(ex.device, non_blocking=cuda), ex.encoder.spec)) for b in batches]
            _ = [o.float().cpu() for o in outs]
        finally:
            if amp is not None:
                amp.__exit__(None, None, None)
    return time.perf_counter() - t0


def read_patches(slide: Path, out: Path, input_size: int):
    import cv2
    import numpy as np
    import torch

    from ghanet_pipeline.wsi.segment import load_coords, segment_paths
    from ghanet_pipeline.wsi.slide import Slide

    coords, attrs = load_coords(segment_paths(out, "bench")["coords"])
    with Slide(slide) as s:
        plan = s.plan(attrs["target_mpp"], attrs["patch_size"])
        arr = [s.read_patch(plan, x, y) for x, y in coords]
    if input_size != attrs["patch_size"]:
        arr = [cv2.resize(a, (input_size, input_size), interpolation=cv2.INTER_AREA) for a in arr]
    return torch.from_numpy(np.stack(arr))


def make_extractors(args: argparse.Namespace) -> dict:
    from ghanet_pipeline.features.extract import Extractor, ExtractParams

    return {prec: Extractor(ExtractParams(weights="random", input_size=args.resize, batch_size=args.batch_size,
                                          num_workers=args.num_workers, device=args.device, precision=prec,
                                          torch_threads=args.threads))
            for prec in args.precisions.split(",")}


def run_main(args: argparse.Namespace) -> None:
    import torch

    from ghanet_pipeline.wsi.inputs import SlideSpec

    slide, out = make_slide(Path(args.cache), args.patches)
    spec = SlideSpec("bench", slide, "bench")
    extractors = make_extractors(args)
    first = next(iter(extractors.values()))
    patches = read_patches(slide, out, first.input_size(256))
    n = len(patches)
    for ex in extractors.values():  # warm-up: kernels, oneDNN primitives, cuDNN plans, page cache
        encoder_only(ex, patches, args.batch_size)
        ex.extract(spec, out, overwrite=True)

    def run_one(prec: str, r: int) -> tuple[float, float]:
        ex = extractors[prec]
        enc = encoder_only(ex, patches, args.batch_size)
        t0 = time.perf_counter()
        res = ex.extract(spec, out, overwrite=True)
        assert res.status == "done", res.message
        return n / enc, n / (time.perf_counter() - t0)

    dev = first.device
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    with Bench("extract", f"extract-features in one process: encoder only vs end to end, {n} patches of "
               f"{first.input_size(256)} px, batch {args.batch_size}, device {dev} ({dev_name}), reader workers "
               f"{first.num_workers}", args,
               units={"encoder_only": "patches/s", "end_to_end": "patches/s", "ratio": "x"},
               labels={"encoder_only": "encoder-only patches/s", "end_to_end": "end-to-end patches/s",
                       "ratio": "end-to-end / encoder-only (medians)"}) as bench:
        rounds = interleave(list(extractors), args.repeats, run_one)
        for prec, v in rounds.results.items():
            enc, e2e = stats(e for e, _ in v), stats(x for _, x in v)
            bench.row(precision=extractors[prec].precision, encoder_only=enc, end_to_end=e2e, ratio=e2e.median / enc.median)
    if args.json:
        shutil.copyfile(bench.path, args.json)


def malloc_child(args: argparse.Namespace) -> list[float]:
    """One fresh process: encoder-only patches/s per repeat."""
    from ghanet_pipeline.features import extract as features
    from ghanet_pipeline.features.extract import Extractor, ExtractParams

    if args.malloc_child == "off":
        features.tune_malloc = lambda: False  # keep glibc defaults in this process
    slide, out = make_slide(Path(args.cache), args.patches)
    ex = Extractor(ExtractParams(weights="random", input_size=args.resize, batch_size=args.batch_size,
                                 device="cpu", precision=args.precisions.split(",")[0], torch_threads=args.threads))
    patches = read_patches(slide, out, ex.input_size(256))
    encoder_only(ex, patches, args.batch_size)
    return [len(patches) / encoder_only(ex, patches, args.batch_size) for _ in range(args.repeats)]


def malloc_compare(args: argparse.Namespace) -> None:
    base = ["--patches", str(args.patches), "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
            "--cache", str(Path(args.cache).resolve()), "--precisions", args.precisions]
    base += ["--resize", str(args.resize)] if args.resize else []
    base += ["--threads", str(args.threads)] if args.threads else []
    env_off = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    labels = {"off": "glibc defaults", "on": "MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=16 GiB (what extract-features "
              "sets with mallopt on CPU)"}
    with Bench("extract_malloc", f"glibc malloc, encoder only on CPU, {args.patches} patches, batch {args.batch_size}, "
               f"{args.precisions.split(',')[0]}, {args.rounds} fresh processes x {args.repeats} repeats per setting, "
               "alternating", args, units={"patches_per_s": "patches/s", "speedup": "x"},
               labels={"speedup": "vs glibc defaults (medians)"}) as bench:
        rounds = interleave(["off", "on"], args.rounds,
                            lambda mode, r: call_worker(MODULE, *base, "--malloc-child", mode, env=env_off)[0])
        rate = {m: stats(x for run in v for x in run) for m, v in rounds.results.items()}
        for mode in ("off", "on"):
            row = bench.row(malloc=labels[mode], patches_per_s=rate[mode])
            if mode == "on":
                row["speedup"] = rate["on"].median / rate["off"].median


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--whole-process" in argv:
        from benchmarks import bench_extract_process

        argv.remove("--whole-process")
        return bench_extract_process.main(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patches", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--resize", type=int, default=None)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ghanet-bench-extract"))
    ap.add_argument("--json", default=None, help="also copy the run's record here")
    ap.add_argument("--malloc-compare", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per malloc mode")
    ap.add_argument("--malloc-child", choices=["on", "off"], default=None, help=argparse.SUPPRESS)
    add_record_args(ap)
    args = ap.parse_args(argv)
    if args.malloc_child:
        emit(malloc_child(args))
    elif args.malloc_compare:
        malloc_compare(args)
    else:
        run_main(args)


if __name__ == "__main__":
    main()
