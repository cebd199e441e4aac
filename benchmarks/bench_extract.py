"""Benchmark: is patch reading hidden behind compute in `extract-features`?

Usage: python benchmarks/bench_extract.py [--patches 64] [--repeats 3] [--precisions fp32,bf16]
       [--device cpu|cuda] [--batch-size 32] [--num-workers N] [--threads N] [--resize PX]
       python benchmarks/bench_extract.py --malloc-compare      (glibc malloc settings on/off)
       python benchmarks/bench_extract.py --whole-process [...]  (= benchmarks/bench_extract_process.py:
           whole processes vs a bare encoder and a CLAM stand-in, both precisions; the headline numbers)

On one synthetic 20x slide, with the same batch size, device and precision, measures
(a) encoder-only patches/s: the encoder on pre-made uint8 patch tensors (normalise on the device,
    forward, features back to host memory), and
(b) end-to-end patches/s: `Extractor.extract` on the same patches (DataLoader workers reading and
    decoding JPEG tiles, transform, encode, HDF5 bag write; model loading excluded),
interleaved a, b, a, b ... so that machine load affects both alike. Prints a markdown table with
min / median over the repeats and the ratio of medians (target >= 0.9).

--malloc-compare runs the encoder-only measurement in fresh processes alternately with glibc's
default malloc and with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` (what ghanet applies
on CPU through ``mallopt``) and prints both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def run_main(args: argparse.Namespace) -> None:
    import platform

    import torch

    from ghanet_pipeline.features.extract import Extractor, ExtractParams
    from ghanet_pipeline.wsi.inputs import SlideSpec

    slide, out = make_slide(Path(args.cache), args.patches)
    spec = SlideSpec("bench", slide, "bench")
    rows = []
    extractors = {}
    for prec in args.precisions.split(","):
        params = ExtractParams(weights="random", input_size=args.resize, batch_size=args.batch_size,
                               num_workers=args.num_workers, device=args.device, precision=prec,
                               torch_threads=args.threads)
        extractors[prec] = Extractor(params)
    first = next(iter(extractors.values()))
    patches = read_patches(slide, out, first.input_size(256))
    n = len(patches)
    times: dict[str, dict[str, list[float]]] = {p: {"enc": [], "e2e": []} for p in extractors}
    for ex in extractors.values():  # warm-up: kernels, oneDNN primitives, cuDNN plans, page cache
        encoder_only(ex, patches, args.batch_size)
        ex.extract(spec, out, overwrite=True)
    for _ in range(args.repeats):
        for prec, ex in extractors.items():
            times[prec]["enc"].append(encoder_only(ex, patches, args.batch_size))
            t0 = time.perf_counter()
            res = ex.extract(spec, out, overwrite=True)
            times[prec]["e2e"].append(time.perf_counter() - t0)
            assert res.status == "done", res.message
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = first.device
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu}, {torch.get_num_threads()} threads"
    print(f"\nextract-features, {n} patches of {first.input_size(256)} px, batch {args.batch_size}, "
          f"device {dev} ({dev_name}), reader workers {first.num_workers}, repeats {args.repeats}, "
          f"torch {torch.__version__}\n")
    print("| precision | encoder-only patches/s (min / median) | end-to-end patches/s (min / median) | "
          "end-to-end / encoder-only (medians) |")
    print("|---|---|---|---|")
    for prec, t in times.items():
        enc = [n / s for s in t["enc"]]
        e2e = [n / s for s in t["e2e"]]
        ratio = statistics.median(e2e) / statistics.median(enc)
        print(f"| {extractors[prec].precision} | {min(enc):.1f} / {statistics.median(enc):.1f} | "
              f"{min(e2e):.1f} / {statistics.median(e2e):.1f} | {ratio:.2f} |")
        rows.append({"precision": prec, "enc": enc, "e2e": e2e})
    if args.json:
        Path(args.json).write_text(json.dumps(rows))


def malloc_child(args: argparse.Namespace) -> None:
    """One fresh process: encoder-only seconds per repeat, printed as JSON."""
    from ghanet_pipeline.features import extract as features
    from ghanet_pipeline.features.extract import Extractor, ExtractParams

    if args.malloc_child == "off":
        features.tune_malloc = lambda: False  # keep glibc defaults in this process
    slide, out = make_slide(Path(args.cache), args.patches)
    ex = Extractor(ExtractParams(weights="random", input_size=args.resize, batch_size=args.batch_size,
                                 device="cpu", precision=args.precisions.split(",")[0], torch_threads=args.threads))
    patches = read_patches(slide, out, ex.input_size(256))
    encoder_only(ex, patches, args.batch_size)
    print(json.dumps([len(patches) / encoder_only(ex, patches, args.batch_size) for _ in range(args.repeats)]))


def malloc_compare(args: argparse.Namespace) -> None:
    base = [sys.executable, __file__, "--patches", str(args.patches), "--batch-size", str(args.batch_size),
            "--repeats", str(args.repeats), "--cache", args.cache, "--precisions", args.precisions]
    if args.resize:
        base += ["--resize", str(args.resize)]
    if args.threads:
        base += ["--threads", str(args.threads)]
    env_off = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    res: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            p = subprocess.run(base + ["--malloc-child", mode], env=env_off, capture_output=True, text=True, check=True)
            res[mode] += json.loads(p.stdout.strip().splitlines()[-1])
    print(f"\nglibc malloc, encoder-only on CPU, {args.patches} patches, batch {args.batch_size}, "
          f"{args.precisions.split(',')[0]}, {args.rounds} fresh processes x {args.repeats} repeats each\n")
    print("| malloc | patches/s (min / median) |")
    print("|---|---|")
    for mode, label in (("off", "glibc defaults"), ("on", "MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=16 GiB")):
        print(f"| {label} | {min(res[mode]):.1f} / {statistics.median(res[mode]):.1f} |")
    print(f"\nmedian speed-up: {statistics.median(res['on']) / statistics.median(res['off']):.2f}x")


def main() -> None:
    if "--whole-process" in sys.argv:
        sys.argv.remove("--whole-process")
        import bench_extract_process

        bench_extract_process.main()
        return
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
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    ap.add_argument("--malloc-compare", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per malloc mode")
    ap.add_argument("--malloc-child", choices=["on", "off"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.malloc_child:
        malloc_child(args)
    elif args.malloc_compare:
        malloc_compare(args)
    else:
        run_main(args)


if __name__ == "__main__":
    main()
