"""``ghanet predict`` of one slide of ``--patches`` patches (default 10,000), end to end, per encoder engine.

    python -m benchmarks.bench_predict_engines [--patches 10000] [--repeats 2] [--threads 2] [--systems ...]

Each measurement is a fresh ``python -m ghanet_pipeline predict`` process timed from start to exit
(imports, loading 5 full-size G-HANet fold models, segmentation reused from a prepared coords file of
exactly ``--patches`` patches, reading, the encoder, the ensemble, the outputs), into a fresh ``--out``
that shares one engine cache (``GHANET_ENGINE_CACHE``). Systems, interleaved over ``--repeats`` rounds:

* ``torch-fp32``: a model trained on fp32 bags, ``--engine torch`` (the default before issue 26; predict
  runs it in precision ``auto``, i.e. bf16 on CPUs with AMX: the record notes which);
* ``openvino-fp32``: the same model, ``--engine openvino`` (precision ``auto`` as well: bf16 on CPUs with
  AMX, which OpenVINO computes there; fp32 elsewhere: the record notes which);
* ``openvino-int8``: a model trained on int8 bags: predict runs the int8 model those bags recorded.
  The int8 model is made once before the rounds (``extract-features --precision int8`` on the same
  slide as the cohort; its time is noted as the one-off cost), as is the fp32 conversion.

Records (bench ``predict_engines``) min / median seconds and patches/s per engine, the speed-up over
torch-fp32 (ratio of medians) and peak RSS; the harness adds the CPU, its instruction sets and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_extract_process import MALLOC_ENV, prepare
from benchmarks.harness import ROOT, Bench, add_record_args, interleave, run_process, stats

SYSTEMS = ("torch-fp32", "openvino-fp32", "openvino-int8")
FP32_ENCODER = {"encoder": "resnet50_trunc", "weights_sha256": "random:0", "input_size": 256, "target_mpp": 0.5,
                "patch_size": 256}


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
    import h5py

    out = cache / "int8-cohort"
    copy_segment(paths, out)
    proc = run_process([sys.executable, "-m", "ghanet_pipeline", "extract-features", str(paths["slide"]), "--out",
                        str(out), "--weights", "random", "--precision", "int8", "--device", "cpu", "--no-progress",
                        "--threads", str(threads)], env=env, cwd=ROOT)
    bag = next((out / "features").glob("*_int8/*.h5"))
    with h5py.File(bag) as f:
        keys = ("encoder", "weights_sha256", "input_size", "target_mpp", "patch_size", "precision", "engine_model",
                "engine_model_sha256")
        return {k: (f.attrs[k].item() if hasattr(f.attrs[k], "item") else f.attrs[k]) for k in keys}, proc.seconds


def predict_command(system: str, slide: Path, runs: dict[str, Path], out: Path) -> list[str]:
    """The ``predict`` process of one system (``<engine>-<precision of the bags the model was trained on>``)."""
    engine, prec = system.split("-")
    return [sys.executable, "-m", "ghanet_pipeline", "predict", str(slide), "--model", str(runs[prec]), "--out", str(out),
            "--weights", "random", "--device", "cpu", "--engine", engine, "--batch-size", "32", "--no-progress"]


def fresh_out(paths: dict[str, Path], cache: Path, tag: str) -> Path:
    """An empty predict ``--out`` holding only the prepared segmentation."""
    out = cache / "predict" / tag
    if out.exists():
        shutil.rmtree(out)
    copy_segment(paths, out)
    return out


def engine_rows(bench: Bench, times: dict[str, list[float]], rss: dict[str, float], patches: int) -> None:
    """One row per engine: seconds, patches/s, speed-up over torch-fp32 (medians), peak RSS."""
    med = {s: stats(v).median for s, v in times.items()}
    for s, v in times.items():
        secs = stats(v)
        bench.row(engine=s, seconds=secs, patches_per_s=secs.rate(patches),
                  vs_torch=med["torch-fp32"] / med[s] if "torch-fp32" in med else None, peak_rss_gib=rss[s])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patches", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ghanet-bench-predict-engines"))
    add_record_args(ap)
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := sorted(set(systems) - set(SYSTEMS)):
        ap.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    cache = Path(args.cache).resolve()
    paths = prepare(cache, args.patches)  # slide + a coords file of exactly --patches patches
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **MALLOC_ENV,
           "GHANET_ENGINE_CACHE": str(cache / "engines")}
    timed_env = {**env, "OMP_NUM_THREADS": str(args.threads)}
    rss = {s: 0.0 for s in systems}

    def run_one(system: str, r: int) -> float:
        out = fresh_out(paths, cache, f"{system}-{r}")
        proc = run_process(predict_command(system, paths["slide"], runs, out), env=timed_env, cwd=ROOT)
        rss[system] = max(rss[system], proc.peak_rss_gib)
        print(f"round {r + 1} {system}: {proc.seconds:.1f} s ({args.patches / proc.seconds:.2f} patches/s)",
              file=sys.stderr, flush=True)
        return proc.seconds

    with Bench("predict_engines", f"`ghanet predict` of one synthetic slide, {args.patches} patches of 256 px, 5 "
               f"full-size G-HANet fold models, whole processes, {args.threads} threads", args,
               units={"seconds": "s", "patches_per_s": "patches/s", "vs_torch": "x", "peak_rss_gib": "GiB"},
               labels={"vs_torch": "vs torch fp32 (medians)"}) as bench:
        int8_enc, int8_secs = int8_encoder(paths, cache, env, args.threads)
        bench.note(f"one-off: int8 model made in {int8_secs:.1f} s (sample, quantization, held-out check, and that "
                   "process's extraction of the slide)")
        rec = json.loads((cache / "engines" / str(int8_enc["engine_model"]) / "record.json").read_text())
        bench.note(f"openvino-int8: {rec.get('int8_convolutions')} of {rec.get('convolutions')} convolutions in int8, the "
                   f"other operations in {rec.get('float_ops', 'fp32')}; held-out error "
                   f"{(rec.get('fidelity') or {}).get('error_spread', float('nan')):.3f} of the spread")
        runs = {"fp32": make_run(cache / "run-fp32", FP32_ENCODER), "int8": make_run(cache / "run-int8", int8_enc)}
        if "openvino-fp32" in systems:  # converts the fp32 model once
            warm = run_process(predict_command("openvino-fp32", paths["slide"], runs, fresh_out(paths, cache, "warm")),
                               env=env, cwd=ROOT)
            bench.note(f"one-off: fp32 conversion + one predict: {warm.seconds:.1f} s")
        for system in [s for s in systems if s.endswith("-fp32")]:
            from ghanet_pipeline.features.engines.choice import resolve_engine

            got = resolve_engine(system.split("-")[0], "auto", "cpu", int8_auto=False)
            bench.note(f"{system}: the model of fp32 bags; predict runs {got.engine} in precision auto = "
                       f"{got.precision} here ({got.reason})")
        rounds = interleave(systems, args.repeats, run_one)
        engine_rows(bench, rounds.results, rss, args.patches)
        bench.note(f"{rounds.complete} interleaved rounds{' (interrupted)' if rounds.interrupted else ''}")


if __name__ == "__main__":
    main()
