"""``ghanet predict`` of one slide of ``--patches`` patches (default 10,000), end to end, per encoder engine.

Each measurement is a fresh ``python -m ghanet_pipeline predict`` process timed from start to exit
(imports, loading 5 full-size G-HANet fold models, segmentation reused from a prepared coords file of
exactly ``--patches`` patches, reading, the encoder, the ensemble, the outputs), into a fresh ``--out``
that shares one engine cache (``GHANET_ENGINE_CACHE``). Systems, interleaved over ``--repeats`` rounds:

* ``torch-fp32``: a model trained on fp32 bags, ``--engine torch`` (the default before issue 26);
* ``openvino-fp32``: the same model, ``--engine openvino``;
* ``openvino-int8``: a model trained on int8 bags: predict runs the int8 model those bags recorded.
  The int8 model is made once before the rounds (``extract-features --precision int8`` on the same
  slide as the cohort; its time is printed as the one-off cost), as is the fp32 conversion.

Prints min / median seconds and patches/s, int8 / torch-fp32 speed-up (medians), the CPU line and the
load average before and after. Usage:
``python benchmarks/bench_predict_engines.py [--patches 10000] [--repeats 2] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
SYSTEMS = ("torch-fp32", "openvino-fp32", "openvino-int8")


def make_run(run_dir: Path, encoder: dict) -> Path:
    """Five full-size G-HANet fold models whose checkpoints record ``encoder`` (as train writes it)."""
    import torch

    from ghanet_pipeline.models import create_model, save_checkpoint

    fams = ["Tumor Suppressor Genes", "Oncogenes", "Protein Kinases", "Cellular Differentiation",
            "Transcription", "Cytokines and Growth"]
    for k in range(5):
        torch.manual_seed(k)
        m = create_model("ghanet", in_dim=1024, family_sizes=[40] * 6, n_bins=4).eval()
        save_checkpoint(run_dir / f"fold_{k}", m, {
            "families": fams, "selected": {f: [f"g{i}" for i in range(40)] for f in fams}, "scaler": {},
            "bin_edges_months": [0.0, 12.0, 24.0, 48.0, 120.0], "encoder": dict(encoder),
            "train_risk_median": -2.0, "fold": k, "epoch": 20})
    return run_dir


def copy_segment(paths: dict[str, Path], out: Path) -> None:
    """The prepared segmentation (coords of exactly --patches patches, with the full run's GeoJSON and QC
    image, which segment needs to see to reuse the coords) into ``<out>/segment``."""
    sid = paths["slide"].name.split(".")[0]
    (out / "segment").mkdir(parents=True, exist_ok=True)
    full = paths["out"].parent / "segment_full" / "segment"
    for src in [paths["out"] / "segment" / f"{sid}.coords.h5", full / f"{sid}.geojson", full / f"{sid}.png"]:
        (out / "segment" / src.name).write_bytes(src.read_bytes())


def int8_encoder(paths: dict[str, Path], cache: Path, env: dict[str, str], threads: int) -> tuple[dict, float]:
    """Make the slide's int8 model (extract-features --precision int8, one process) and return the bag's
    encoder record (what train writes into checkpoints) and the seconds it took."""
    import subprocess

    import h5py

    out = cache / "int8-cohort"
    copy_segment(paths, out)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ghanet_pipeline", "extract-features", str(paths["slide"]), "--out", str(out),
                    "--weights", "random", "--precision", "int8", "--device", "cpu", "--no-progress", "--threads",
                    str(threads)], env=env, check=True, cwd=str(ROOT), stdout=subprocess.DEVNULL)
    secs = time.perf_counter() - t
    bag = next((out / "features").glob("*_int8/*.h5"))
    with h5py.File(bag) as f:
        keys = ("encoder", "weights_sha256", "input_size", "target_mpp", "patch_size", "precision", "engine_model",
                "engine_model_sha256")
        return {k: (f.attrs[k].item() if hasattr(f.attrs[k], "item") else f.attrs[k]) for k in keys}, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ghanet-bench-predict-engines"))
    args = ap.parse_args()

    from bench_extract_process import MALLOC_ENV, header, prepare, run_timed

    cache = Path(args.cache)
    paths = prepare(cache, args.patches)  # slide + a coords file of exactly --patches patches
    engines = cache / "engines"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **MALLOC_ENV,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "GHANET_ENGINE_CACHE": str(engines)}
    fp32_enc = {"encoder": "resnet50_trunc", "weights_sha256": "random:0", "input_size": 256, "target_mpp": 0.5,
                "patch_size": 256}
    int8_enc, int8_secs = int8_encoder(paths, cache, env, args.threads)
    print(f"one-off: int8 model {int8_enc['engine_model']} made in {int8_secs:.1f} s (sample, quantization, "
          f"held-out check, and that process's extraction of the slide)", file=sys.stderr, flush=True)
    runs = {"fp32": make_run(cache / "run-fp32", fp32_enc), "int8": make_run(cache / "run-int8", int8_enc)}
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]

    def command(system: str, out: Path) -> list[str]:
        engine, prec = system.split("-")
        return [sys.executable, "-m", "ghanet_pipeline", "predict", str(paths["slide"]), "--model", str(runs[prec]),
                "--out", str(out), "--weights", "random", "--device", "cpu", "--engine", engine, "--batch-size", "32",
                "--no-progress"]

    def fresh_out(tag: str) -> Path:
        out = cache / "predict" / tag
        if out.exists():
            import shutil

            shutil.rmtree(out)
        (out / "segment").mkdir(parents=True)
        copy_segment(paths, out)
        return out

    secs, _ = run_timed(command("openvino-fp32", fresh_out("warm")), env)  # converts the fp32 model once
    print(f"one-off: fp32 conversion + one predict: {secs:.1f} s", file=sys.stderr, flush=True)
    torch_threads = {"OMP_NUM_THREADS": str(args.threads)}
    load0 = os.getloadavg()
    times: dict[str, list[float]] = {s: [] for s in systems}
    for r in range(args.repeats):
        for s in systems:
            t, _ = run_timed(command(s, fresh_out(f"{s}-{r}")), {**env, **torch_threads})
            times[s].append(t)
            print(f"round {r + 1} {s}: {t:.1f} s ({args.patches / t:.2f} patches/s)", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    print(f"\n`ghanet predict` of one synthetic slide, {args.patches} patches of 256 px, 5 full-size G-HANet fold models, "
          f"whole processes, {args.repeats} interleaved rounds, {args.threads} threads.\n{header()}\n"
          f"load average before {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, after {load1[0]:.1f}/{load1[1]:.1f}/"
          f"{load1[2]:.1f}\n")
    print("| engine | s (min / median) | patches/s (median) | vs torch fp32 (medians) |")
    print("|---|---:|---:|---:|")
    med = {s: statistics.median(v) for s, v in times.items()}
    for s in systems:
        ratio = f"{med['torch-fp32'] / med[s]:.2f}x" if "torch-fp32" in med else ""
        print(f"| {s} | {min(times[s]):.1f} / {med[s]:.1f} | {args.patches / med[s]:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
