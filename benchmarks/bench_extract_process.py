"""Whole-process extraction benchmark: `ghanet extract-features` vs a bare encoder vs a CLAM stand-in.

Usage: python benchmarks/bench_extract_process.py [--patches 948] [--repeats 3] [--systems ...]
       python benchmarks/bench_extract_process.py --reader [--real-slide PATH]   (reader-only tiles/s)

Every measurement is a fresh process timed from start to exit (interpreter start, imports, model
build, first batch and the bag write included), on one synthetic 20x Aperio-like slide with
``--patches`` patches of 256 px. All processes get the same glibc malloc settings
(``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=16 GiB``, what ghanet itself applies on CPU). Systems,
run interleaved (one of each per round, ``--repeats`` rounds):

* ``bare-fp32`` / ``bare-bf16``: the truncated ResNet50 (torchvision), channels_last, on the same
  patches pre-decoded into a ``.npy`` file, batch 32, normalise + forward + features to numpy;
  nothing else (no slide reading, no bag);
* ``ghanet-fp32`` / ``ghanet-bf16`` / ``ghanet-auto``: ``python -m ghanet_pipeline extract-features``
  with ``--precision`` (auto = no flag; fp32 and bf16 with ``--engine torch``, the PyTorch encoder
  before issue 26), ``--weights random``, batch 32 (the CPU default);
* ``ghanet-ovfp32`` / ``ghanet-int8``: the same with ``--engine openvino --precision fp32`` and with
  ``--precision int8``. The converted / quantized model is made once per weights, input size and
  cohort and cached (``<out>/engines``): one untimed warm-up process of each makes it before round 1,
  and its time (conversion, or calibration sample + quantization + held-out check, plus that run's
  extraction) is printed as the one-off cost;
* ``ghanet-224``: the same with ``--resize 224``, fp32;
* ``clam-256`` / ``clam-224``: ``benchmarks/clam_standin.py`` (our re-implementation of CLAM's data
  path, see its docstring) with ``--target-patch-size -1`` / ``224``.

Prints min / median patches/s, the ratio of medians to the bare encoder of the same precision and to
the CLAM stand-in at the same input size, peak RSS, the CPU model and bf16 capability, what
``--precision auto`` resolves to, the load average before and after, and the bag's precision attr.

``--isa AVX512_CORE_BF16`` runs every child with oneDNN limited to that instruction set (e.g. a
Sapphire Rapids CPU without its AMX units, standing in for AVX512-BF16-only CPUs); ``--isa AVX2``
stands in for a CPU without bf16 instructions.

``--reader``: patches/s and patches per CPU-second of one thread reading the same coords with the
raw-tile path vs OpenSlide only (fresh slide handle per repeat, interleaved), on the synthetic 20x
slide (256 px patches = one 256 px tile), on a synthetic 40x slide of the same tissue (0.25 um/px,
256 px tiles; the same patches at 2x the coordinates: 512 level-0 px read at level 0 = 2 x 2 tiles,
then area-downscaled to 256 px in both paths, as extraction does), optionally also on a real SVS with
its own tile size as patch size. Before timing, the first patches of each case are checked to be
identical in both paths and the share of patches the raw path serves is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
ALL_SYSTEMS = ("bare-fp32", "ghanet-fp32", "ghanet-ovfp32", "ghanet-int8", "bare-bf16", "ghanet-bf16", "ghanet-auto",
               "ghanet-224", "clam-256", "clam-224")
#: systems whose first process builds a cached model (timed separately, before the rounds)
WARM_UP = ("ghanet-ovfp32", "ghanet-int8")


def precision_of(system: str) -> str:
    """What a system computes in: fp32 / bf16 / int8 / auto (CLAM and 224 px: fp32)."""
    tail = system.split("-")[1]
    return {"224": "fp32", "256": "fp32", "ovfp32": "fp32"}.get(tail, tail)


def prepare(cache: Path, n: int) -> dict[str, Path]:
    """Slide, coords for the CLI (slide id = file stem), CLAM-style coords, pre-decoded patches (.npy)."""
    import h5py
    import numpy as np

    from ghanet_pipeline.inputs import SlideSpec
    from ghanet_pipeline.wsi.segment import SegmentParams, load_coords, segment_paths, segment_slide
    from ghanet_pipeline.wsi.slide import Slide
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    cache.mkdir(parents=True, exist_ok=True)
    side = 256 * max(16, int((n / 0.4) ** 0.5) + 2)
    slide = cache / f"wp_{side}.svs"
    if not slide.exists():
        write_synthetic_slide(slide, side, side, mpp=0.5, phenotype=0.3, seed=11)
    sid = slide.name.split(".")[0]
    full = cache / "segment_full"
    src = segment_paths(full, sid)["coords"]
    if not src.exists():
        segment_slide(SlideSpec(sid, slide, sid), full, SegmentParams())
    coords, _ = load_coords(src)
    if len(coords) < n:
        raise SystemExit(f"the synthetic slide has only {len(coords)} patches; ask for fewer")
    out = cache / f"out_{n}"
    dst = segment_paths(out, sid)["coords"]
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(src) as f, h5py.File(dst, "w") as g:
            g["coords"] = np.ascontiguousarray(f["coords"][:n])
            for k, v in f.attrs.items():
                if k != "complete":
                    g.attrs[k] = v
            g.attrs["complete"] = True
    clam = cache / f"clam_coords_{n}.h5"
    if not clam.exists():
        with h5py.File(clam, "w") as g:
            g["coords"] = np.ascontiguousarray(coords[:n])
            g["coords"].attrs["patch_level"] = 0
            g["coords"].attrs["patch_size"] = 256
    npy = cache / f"patches_{n}.npy"
    if not npy.exists():
        with Slide(slide, raw_tiles=False) as s:
            plan = s.plan(0.5, 256)
            np.save(npy, np.stack([s.read_patch(plan, int(x), int(y)) for x, y in coords[:n]]))
    return {"slide": slide, "out": out, "clam_coords": clam, "npy": npy}


def prepare_40x(cache: Path, slide_20x: Path) -> Path:
    """The same tissue as ``slide_20x`` (same seed, same physical size) scanned at 40x: 0.25 um/px, 256 px
    tiles, twice the pixels per side (a 20x patch at level-0 (x, y) is the 40x patch at (2x, 2y))."""
    from ghanet_pipeline.wsi.slide import Slide
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    with Slide(slide_20x) as s:
        w, h = s.dimensions
    slide = cache / f"wp40x_{2 * w}.svs"
    if not slide.exists():
        write_synthetic_slide(slide, 2 * w, 2 * h, mpp=0.25, phenotype=0.3, seed=11)
    return slide


def bare_child(args: argparse.Namespace) -> None:
    """The bare encoder in this process: torchvision trunk, channels_last, batch 32, on pre-decoded patches."""
    import numpy as np
    import torch
    from torch import nn
    from torchvision.models import resnet50

    torch.manual_seed(0)
    full = resnet50(weights=None)
    model = nn.Sequential(full.conv1, full.bn1, full.relu, full.maxpool, full.layer1, full.layer2, full.layer3,
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(1)).eval().to(memory_format=torch.channels_last)
    patches = np.load(args.bare_child)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    outs = []
    with torch.inference_mode(), amp:
        for i in range(0, len(patches), 32):
            x = torch.from_numpy(patches[i:i + 32]).permute(0, 3, 1, 2).float()
            x = ((x / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)
            outs.append(model(x).float().numpy())
    assert np.isfinite(np.concatenate(outs)).all()


def command(system: str, paths: dict[str, Path], n: int, threads: int | None) -> list[str]:
    py = [sys.executable]
    if system.startswith("bare-"):
        return py + [__file__, "--bare-child", str(paths["npy"]), "--precision", system.split("-")[1]]
    if system.startswith("clam-"):
        size = system.split("-")[1]
        cmd = py + [str(ROOT / "benchmarks" / "clam_standin.py"), str(paths["slide"]), str(paths["clam_coords"]),
                    str(paths["out"] / "clam"), "--target-patch-size", "-1" if size == "256" else size]
        return cmd + (["--threads", str(threads)] if threads else [])
    cmd = py + ["-m", "ghanet_pipeline", "extract-features", str(paths["slide"]), "--out", str(paths["out"]),
                "--weights", "random", "--overwrite", "--no-progress", "--device", "cpu", "--batch-size", "32"]
    variant = system.split("-")[1]
    if variant == "224":
        cmd += ["--resize", "224", "--precision", "fp32", "--engine", "torch"]
    elif variant == "ovfp32":
        cmd += ["--engine", "openvino", "--precision", "fp32"]
    elif variant == "int8":
        cmd += ["--precision", "int8"]
    elif variant != "auto":
        cmd += ["--precision", variant, "--engine", "torch"]
    return cmd + (["--threads", str(threads)] if threads else [])


def run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(ROOT))
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise
    secs = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return secs, usage.ru_maxrss / 2**20


def bag_precision(paths: dict[str, Path]) -> str:
    import h5py

    bags = sorted((paths["out"] / "features").glob("resnet50_trunc_256_*/*.h5"), key=lambda p: -p.stat().st_mtime)
    if not bags:
        return "?"
    with h5py.File(bags[0]) as f:
        return str(f.attrs.get("precision"))


def header() -> str:
    import torch

    from ghanet_pipeline.features.runtime import auto_cpu_precision, cpu_cores, cpu_info

    info = cpu_info()
    auto, why = auto_cpu_precision(info)
    return (f"CPU: {info.describe()}; {cpu_cores()} cores; precision auto -> {auto} ({why}); "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def whole_process(args: argparse.Namespace) -> None:
    paths = prepare(Path(args.cache), args.patches)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **MALLOC_ENV,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.isa:  # pretend a smaller CPU: oneDNN (convolutions) and ATen's own kernels stop at this ISA
        env["ONEDNN_MAX_CPU_ISA"] = args.isa
        env["ATEN_CPU_CAPABILITY"] = "avx512" if args.isa.upper().startswith("AVX512") else "avx2"
    load0 = os.getloadavg()
    times: dict[str, list[float]] = {s: [] for s in systems}
    rss: dict[str, float] = {s: 0.0 for s in systems}
    auto_prec = "?"
    rounds = 0
    for s in systems:  # one-off model builds (conversion, int8 quantization): cached for the timed rounds
        if s in WARM_UP:
            secs, _ = run_timed(command(s, paths, args.patches, args.threads), env)
            print(f"warm-up {s} (builds the cached model, then extracts): {secs:.1f} s", file=sys.stderr, flush=True)
    try:
        for r in range(args.repeats):
            for s in systems:
                secs, peak = run_timed(command(s, paths, args.patches, args.threads), env)
                times[s].append(secs)
                rss[s] = max(rss[s], peak)
                if s == "ghanet-auto":
                    auto_prec = bag_precision(paths)
                print(f"round {r + 1} {s}: {args.patches / secs:.2f} patches/s ({secs:.1f} s)", file=sys.stderr,
                      flush=True)
            rounds += 1
    except KeyboardInterrupt:  # stopped early (Ctrl-C / SIGINT): report the complete rounds only
        print(f"interrupted after {rounds} complete round(s)", file=sys.stderr)
        times = {s: v[:rounds] for s, v in times.items()}
        if not rounds:
            raise SystemExit(1) from None
        args.repeats = rounds
    load1 = os.getloadavg()
    rate = {s: [args.patches / t for t in times[s]] for s in systems}
    med = {s: statistics.median(v) for s, v in rate.items()}
    print(f"\nWhole processes, {args.patches} patches of 256 px (one synthetic 20x slide), {args.repeats} interleaved "
          f"rounds, batch 32, same glibc malloc settings for all.\n{header()}\n"
          + (f"instruction sets limited to ONEDNN_MAX_CPU_ISA={args.isa} (no AMX below AVX512_CORE_AMX)\n" if args.isa else "")
          + f"load average (1/5/15 min) before {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, after "
          f"{load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f}\n")
    print("| system | patches/s min / median | vs bare encoder (same precision) | vs CLAM stand-in (same size) | peak RSS GiB |")
    print("|---|---|---|---|---|")
    for s in systems:
        prec = auto_prec if s == "ghanet-auto" else precision_of(s)
        bare = "bare-fp32" if prec == "int8" else f"bare-{prec}"  # int8 is compared with the fp32 encoder
        vs_bare = f"{med[s] / med[bare]:.2f}x" if bare in med and not s.startswith(("bare", "clam")) and s != "ghanet-224" else ""
        clam = "clam-224" if s.endswith("224") else "clam-256"
        vs_clam = (f"{med[s] / med[clam]:.2f}x" if clam in med and s.startswith("ghanet") and (s.endswith("224") or prec == "fp32")
                   else "")
        label = f"{s} (bag: {auto_prec})" if s == "ghanet-auto" else s
        print(f"| {label} | {min(rate[s]):.2f} / {med[s]:.2f} | {vs_bare} | {vs_clam} | {rss[s]:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rates": rate, "rss_gib": rss, "load": [load0, load1]}))


def reader_only(args: argparse.Namespace) -> None:
    """One thread, same coords: raw-tile path vs OpenSlide; wall and CPU time per patch."""
    import numpy as np

    from ghanet_pipeline.wsi.segment import load_coords, segment_paths
    from ghanet_pipeline.wsi.slide import Slide

    paths = prepare(Path(args.cache), args.patches)
    sid = paths["slide"].name.split(".")[0]
    coords, attrs = load_coords(segment_paths(paths["out"], sid)["coords"])
    slide_40x = prepare_40x(Path(args.cache), paths["slide"])
    cases = [("synthetic 20x slide, 256 px tiles, 256 px patches (1 tile)", paths["slide"], 0.5, 256, coords),
             ("synthetic 40x slide, 256 px tiles, 512 level-0 px -> 256 px patches (2 x 2 tiles)", slide_40x, 0.5,
              256, coords * 2)]
    if args.real_slide:
        import tifffile

        with tifffile.TiffFile(args.real_slide) as tif:
            page = tif.pages[0]
            tile, w, h = int(page.tilewidth), page.imagewidth, page.imagelength
        with Slide(args.real_slide) as s:
            mpp = s.mpp
        grid = [(x, y) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]
        cases.append((f"{Path(args.real_slide).name}, {tile} px tiles", Path(args.real_slide), mpp, tile, grid))
    load0 = os.getloadavg()
    print(f"\nReader only, one thread, {args.repeats} interleaved rounds, fresh slide handle per round.\n{header()}\n"
          f"load average (1/5/15 min) before {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}\n")
    for name, path, mpp, size, cc in cases:
        with Slide(path) as fast, Slide(path, raw_tiles=False) as slow:
            plan = fast.plan(mpp, size)
            raw = fast.raw_reader(plan)
            served = sum(raw is not None and raw.tile_indices(int(x), int(y)) is not None for x, y in cc)
            for x, y in cc[:16]:
                if not np.array_equal(fast.read_patch(plan, int(x), int(y)), slow.read_patch(plan, int(x), int(y))):
                    raise SystemExit(f"{name}: raw and OpenSlide patches differ at ({x}, {y})")
        k = f"{raw.k} x {raw.k} tiles of {raw.tile} px" if raw is not None else "no raw reader"
        print(f"{name}: {len(cc)} patches, read {plan.read_size} px at level {plan.level} -> {plan.patch_size} px; "
              f"raw path: {k}, serves {served}/{len(cc)} patches; first {min(16, len(cc))} identical to OpenSlide")
    print("\n| slide | path | patches/s min / median | patches per CPU-second (median) | raw / OpenSlide (CPU-s, median) |")
    print("|---|---|---|---|---|")
    for name, path, mpp, size, cc in cases:
        res: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.repeats):
            for raw_on in (True, False):
                with Slide(path, raw_tiles=raw_on) as s:
                    plan = s.plan(mpp, size)
                    w0, c0 = time.perf_counter(), time.process_time()
                    for x, y in cc:
                        s.read_patch(plan, int(x), int(y))
                    res[raw_on].append((len(cc) / (time.perf_counter() - w0), len(cc) / (time.process_time() - c0)))
        cpu_med = {k: statistics.median(c for _, c in v) for k, v in res.items()}
        for raw_on in (True, False):
            walls = [wv for wv, _ in res[raw_on]]
            ratio = f"{cpu_med[True] / cpu_med[False]:.2f}x" if raw_on else ""
            print(f"| {name} | {'raw tiles (libjpeg-turbo)' if raw_on else 'OpenSlide'} | {min(walls):.0f} / "
                  f"{statistics.median(walls):.0f} | {cpu_med[raw_on]:.0f} | {ratio} |", flush=True)
    load1 = os.getloadavg()
    print(f"\nload average (1/5/15 min) after {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patches", type=int, default=948)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ghanet-bench-extract-process"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--isa", default=None, metavar="ONEDNN_ISA",
                    help="limit the children's instruction sets, e.g. AVX512_CORE_BF16 (AVX512-BF16 without AMX) "
                         "or AVX2 (no bf16 instructions: bf16 emulated)")
    ap.add_argument("--reader", action="store_true")
    ap.add_argument("--real-slide", default=None, help="also time the reader on this SVS (its tiles as patches)")
    ap.add_argument("--bare-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_child:
        bare_child(args)
    elif args.reader:
        reader_only(args)
    else:
        whole_process(args)


if __name__ == "__main__":
    main()
