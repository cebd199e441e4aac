"""Whole-process extraction benchmark: `ghanet extract-features` vs a bare encoder vs a CLAM stand-in.

Usage: python -m benchmarks.bench_extract_process [--patches 948] [--repeats 3] [--systems ...]
       python -m benchmarks.bench_extract_process --reader [--real-slide PATH]   (reader-only tiles/s)

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
* ``ghanet-ovfp32`` / ``ghanet-ovbf16`` / ``ghanet-int8``: the same with ``--engine openvino --precision
  fp32``, with ``--engine openvino --precision bf16`` (CPUs with bf16 instructions only) and with
  ``--precision int8``. The converted / quantized model is made once per weights, input size and
  cohort and cached (``<out>/engines``): one untimed warm-up process of each makes it before round 1,
  and its time (conversion, or calibration sample + quantization + held-out check, plus that run's
  extraction) is printed as the one-off cost;
* ``ghanet-224``: the same with ``--resize 224``, fp32;
* ``clam-256`` / ``clam-224``: ``python -m benchmarks.clam_standin`` (our re-implementation of CLAM's data
  path, see its docstring) with ``--target-patch-size -1`` / ``224``.

Records (bench ``extract_process``) min / median patches/s, the ratio of medians to the bare encoder of the
same precision and to the CLAM stand-in at the same input size, peak RSS, what ``--precision auto`` resolves
to and the bag's precision attr (the harness adds the CPU, its instruction sets and the load).

``--isa AVX512_CORE_BF16`` runs every child with oneDNN limited to that instruction set (e.g. a
Sapphire Rapids CPU without its AMX units, standing in for AVX512-BF16-only CPUs); ``--isa AVX2``
stands in for a CPU without bf16 instructions. Record: bench ``extract_isa_<isa, lower case>``. A run with
``ghanet-ovfp32``, ``ghanet-ovbf16`` or ``ghanet-int8`` and no CLAM stand-in among its systems is the engines comparison: bench
``extract_engines``.

``--reader``: patches/s and patches per CPU-second of one thread reading the same coords with the
raw-tile path vs OpenSlide only (fresh slide handle per repeat, interleaved), on the synthetic 20x
slide (256 px patches = one 256 px tile), on a synthetic 40x slide of the same tissue (0.25 um/px,
256 px tiles; the same patches at 2x the coordinates: 512 level-0 px read at level 0 = 2 x 2 tiles,
then area-downscaled to 256 px in both paths, as extraction does), optionally also on a real SVS with
its own tile size as patch size. Before timing, the first patches of each case are checked to be
identical in both paths and the share of patches the raw path serves is noted. Record: bench
``extract_reader``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import ROOT, Bench, add_record_args, interleave, module_command, run_process, stats

MODULE = "benchmarks.bench_extract_process"
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
ALL_SYSTEMS = ("bare-fp32", "ghanet-fp32", "ghanet-ovfp32", "ghanet-int8", "bare-bf16", "ghanet-bf16", "ghanet-ovbf16",
               "ghanet-auto",
               "ghanet-224", "clam-256", "clam-224")
#: systems whose first process builds a cached model (timed separately, before the rounds)
WARM_UP = ("ghanet-ovfp32", "ghanet-ovbf16", "ghanet-int8")


def precision_of(system: str) -> str:
    """What a system computes in: fp32 / bf16 / int8 / auto (CLAM and 224 px: fp32)."""
    tail = system.split("-")[1]
    return {"224": "fp32", "256": "fp32", "ovfp32": "fp32", "ovbf16": "bf16"}.get(tail, tail)


def prepare(cache: Path, n: int) -> dict[str, Path]:
    """Slide, coords for the CLI (slide id = file stem), CLAM-style coords, pre-decoded patches (.npy)."""
    import h5py
    import numpy as np

    from ghanet_pipeline.wsi.inputs import SlideSpec
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


def command(system: str, paths: dict[str, Path], threads: int | None) -> list[str]:
    """The child process of one system (run from the repository root)."""
    if system.startswith("bare-"):
        return module_command(MODULE, "--bare-child", paths["npy"], "--precision", system.split("-")[1])
    if system.startswith("clam-"):
        size = system.split("-")[1]
        cmd = module_command("benchmarks.clam_standin", paths["slide"], paths["clam_coords"], paths["out"] / "clam",
                             "--target-patch-size", "-1" if size == "256" else size)
        return cmd + (["--threads", str(threads)] if threads else [])
    cmd = module_command("ghanet_pipeline", "extract-features", paths["slide"], "--out", paths["out"], "--weights",
                         "random", "--overwrite", "--no-progress", "--device", "cpu", "--batch-size", "32")
    variant = system.split("-")[1]
    if variant == "224":
        cmd += ["--resize", "224", "--precision", "fp32", "--engine", "torch"]
    elif variant in ("ovfp32", "ovbf16"):
        cmd += ["--engine", "openvino", "--precision", variant[2:]]
    elif variant == "int8":
        cmd += ["--precision", "int8"]
    elif variant != "auto":
        cmd += ["--precision", variant, "--engine", "torch"]
    return cmd + (["--threads", str(threads)] if threads else [])


def bag_precision(paths: dict[str, Path]) -> str:
    import h5py

    bags = sorted((paths["out"] / "features").glob("resnet50_trunc_256_*/*.h5"), key=lambda p: -p.stat().st_mtime)
    if not bags:
        return "?"
    with h5py.File(bags[0]) as f:
        return str(f.attrs.get("precision"))


def auto_precision_note() -> str:
    from ghanet_pipeline.env.runtime import auto_cpu_precision, cpu_info

    auto, why = auto_cpu_precision(cpu_info())
    return f"precision auto -> {auto} on this CPU ({why})"


def child_env(isa: str | None) -> dict[str, str]:
    """The same glibc malloc settings for every child; ``isa``: oneDNN and ATen limited to that instruction set."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **MALLOC_ENV}
    if isa:  # pretend a smaller CPU: oneDNN (convolutions) and ATen's own kernels stop at this ISA
        env["ONEDNN_MAX_CPU_ISA"] = isa
        env["ATEN_CPU_CAPABILITY"] = "avx512" if isa.upper().startswith("AVX512") else "avx2"
    return env


def system_rows(bench: Bench, rates: dict[str, list[float]], rss: dict[str, float], auto_prec: str) -> None:
    """One row per system: patches/s, ratios of medians to the bare encoder and the CLAM stand-in, peak RSS."""
    med = {s: stats(v).median for s, v in rates.items()}
    for s, v in rates.items():
        prec = auto_prec if s == "ghanet-auto" else precision_of(s)
        bare = "bare-fp32" if prec == "int8" else f"bare-{prec}"  # int8 is compared with the fp32 encoder
        clam = "clam-224" if s.endswith("224") else "clam-256"
        vs_bare = med[s] / med[bare] if bare in med and s.startswith("ghanet") and s != "ghanet-224" else None
        vs_clam = (med[s] / med[clam] if clam in med and s.startswith("ghanet") and (s.endswith("224") or prec == "fp32")
                   else None)
        bench.row(system=f"{s} (bag: {auto_prec})" if s == "ghanet-auto" else s, patches_per_s=stats(v),
                  vs_bare=vs_bare, vs_clam=vs_clam, peak_rss_gib=rss[s])
    for a, b in (("ghanet-fp32", "bare-fp32"), ("ghanet-int8", "bare-fp32"), ("ghanet-ovfp32", "bare-fp32"),
                 ("ghanet-int8", "bare-bf16"), ("ghanet-bf16", "bare-bf16"), ("ghanet-ovbf16", "bare-bf16"),
                 ("ghanet-ovbf16", "ghanet-int8"), ("ghanet-fp32", "clam-256"),
                 ("ghanet-224", "clam-224"), ("ghanet-auto", "ghanet-fp32")):
        if a in rates and b in rates:
            bench.note(f"per round {a} / {b}: " + ", ".join(f"{x / y:.2f}" for x, y in zip(rates[a], rates[b], strict=True)))


def whole_process(args: argparse.Namespace) -> None:
    paths = prepare(Path(args.cache).resolve(), args.patches)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    from ghanet_pipeline.features.engines.choice import native_bf16

    skipped = [s for s in systems if s == "ghanet-ovbf16" and (args.isa or not native_bf16())]
    if skipped:  # OpenVINO has no bf16 emulation: the CLI refuses it on such CPUs
        print("ghanet-ovbf16 left out: OpenVINO runs bf16 only on CPUs with bf16 instructions", file=sys.stderr)
        systems = [s for s in systems if s not in skipped]
    env = child_env(args.isa)
    rss: dict[str, float] = {s: 0.0 for s in systems}
    auto_prec = ["?"]

    def run_one(system: str, r: int) -> float:
        proc = run_process(command(system, paths, args.threads), env=env, cwd=ROOT)
        rss[system] = max(rss[system], proc.peak_rss_gib)
        if system == "ghanet-auto":
            auto_prec[0] = bag_precision(paths)
        print(f"round {r + 1} {system}: {args.patches / proc.seconds:.2f} patches/s ({proc.seconds:.1f} s)",
              file=sys.stderr, flush=True)
        return args.patches / proc.seconds

    # the engines comparison (OpenVINO systems, no CLAM stand-in) has its own record and doc table
    engines = any(s in systems for s in WARM_UP) and not any(s.startswith("clam") for s in systems)
    name = f"extract_isa_{args.isa.lower()}" if args.isa else "extract_engines" if engines else "extract_process"
    with Bench(name, f"Whole processes, {args.patches} patches of 256 px (one synthetic 20x slide), "
               "batch 32, the same glibc malloc settings for all", args,
               units={"patches_per_s": "patches/s", "vs_bare": "x", "vs_clam": "x", "peak_rss_gib": "GiB"},
               labels={"vs_bare": "vs bare encoder, same precision (medians)",
                       "vs_clam": "vs CLAM stand-in, same size (medians)"}) as bench:
        for s in systems:  # one-off model builds (conversion, int8 quantization): cached for the timed rounds
            if s in WARM_UP:
                proc = run_process(command(s, paths, args.threads), env=env, cwd=ROOT)
                bench.note(f"warm-up {s} (builds the cached model, then extracts): {proc.seconds:.1f} s")
        rounds = interleave(systems, args.repeats, run_one)
        system_rows(bench, rounds.results, rss, auto_prec[0])
        bench.note(f"{rounds.complete} interleaved rounds{' (interrupted)' if rounds.interrupted else ''}; "
                   f"{auto_precision_note()}")
        if args.isa:
            bench.note(f"instruction sets limited to ONEDNN_MAX_CPU_ISA={args.isa} (no AMX below AVX512_CORE_AMX)")
    if args.json:
        shutil.copyfile(bench.path, args.json)


def reader_cases(args: argparse.Namespace) -> list[tuple]:
    """(name, slide, mpp, patch size, coords) of the 20x and 40x synthetic slides and the optional real one."""
    from ghanet_pipeline.wsi.segment import load_coords, segment_paths
    from ghanet_pipeline.wsi.slide import Slide

    paths = prepare(Path(args.cache), args.patches)
    sid = paths["slide"].name.split(".")[0]
    coords, _ = load_coords(segment_paths(paths["out"], sid)["coords"])
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
    return cases


def check_case(name: str, path: Path, mpp: float, size: int, cc) -> str:  # noqa: ANN001
    """The first 16 patches identical in both paths (else exit); a line on what the raw path serves."""
    import numpy as np

    from ghanet_pipeline.wsi.slide import Slide

    with Slide(path) as fast, Slide(path, raw_tiles=False) as slow:
        plan = fast.plan(mpp, size)
        raw = fast.raw_reader(plan)
        served = sum(raw is not None and raw.tile_indices(int(x), int(y)) is not None for x, y in cc)
        for x, y in cc[:16]:
            if not np.array_equal(fast.read_patch(plan, int(x), int(y)), slow.read_patch(plan, int(x), int(y))):
                raise SystemExit(f"{name}: raw and OpenSlide patches differ at ({x}, {y})")
    k = f"{raw.k} x {raw.k} tiles of {raw.tile} px" if raw is not None else "no raw reader"
    return (f"{name}: {len(cc)} patches, read {plan.read_size} px at level {plan.level} -> {plan.patch_size} px; "
            f"raw path: {k}, serves {served}/{len(cc)} patches; first {min(16, len(cc))} identical to OpenSlide")


def read_all(path: Path, mpp: float, size: int, cc, raw_on: bool) -> tuple[float, float]:  # noqa: ANN001
    """(patches per wall second, patches per CPU second) of one pass over ``cc`` with a fresh slide handle."""
    from ghanet_pipeline.wsi.slide import Slide

    with Slide(path, raw_tiles=raw_on) as s:
        plan = s.plan(mpp, size)
        w0, c0 = time.perf_counter(), time.process_time()
        for x, y in cc:
            s.read_patch(plan, int(x), int(y))
        return len(cc) / (time.perf_counter() - w0), len(cc) / (time.process_time() - c0)


def reader_only(args: argparse.Namespace) -> None:
    """One thread, same coords: raw-tile path vs OpenSlide; wall and CPU time per patch."""
    with Bench("extract_reader", f"Reader only, one thread, {args.repeats} interleaved rounds, fresh slide handle per "
               "round", args, units={"patches_per_s": "patches/s", "per_cpu_s": "patches/CPU-s", "raw_vs_openslide": "x"},
               labels={"per_cpu_s": "patches/CPU-s (median)",
                       "raw_vs_openslide": "raw / OpenSlide (CPU-s, median)"}) as bench:
        for name, path, mpp, size, cc in reader_cases(args):
            bench.note(check_case(name, path, mpp, size, cc))
            rounds = interleave(["raw tiles (libjpeg-turbo)", "OpenSlide"], args.repeats,
                                lambda which, r, case=(path, mpp, size, cc): read_all(*case, which.startswith("raw")))
            cpu = {k: stats(c for _, c in v).median for k, v in rounds.results.items()}
            for which, v in rounds.results.items():
                bench.row(slide=name, path=which, patches_per_s=stats(w for w, _ in v), per_cpu_s=cpu[which],
                          raw_vs_openslide=cpu[which] / cpu["OpenSlide"] if which.startswith("raw") else None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patches", type=int, default=948)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ghanet-bench-extract-process"))
    ap.add_argument("--json", default=None, help="also copy the run's record here")
    ap.add_argument("--isa", default=None, metavar="ONEDNN_ISA",
                    help="limit the children's instruction sets, e.g. AVX512_CORE_BF16 (AVX512-BF16 without AMX) "
                         "or AVX2 (no bf16 instructions: bf16 emulated)")
    ap.add_argument("--reader", action="store_true")
    ap.add_argument("--real-slide", default=None, help="also time the reader on this SVS (its tiles as patches)")
    ap.add_argument("--bare-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    add_record_args(ap)
    args = ap.parse_args(argv)
    if args.bare_child:
        bare_child(args)
    elif args.reader:
        reader_only(args)
    else:
        whole_process(args)


if __name__ == "__main__":
    main()
