"""How much slower is ``ghanet predict`` than feature extraction alone on a biopsy-sized slide (CPU)?

In one run, on the same synthetic slide, device and thread settings:

- ``segment``: ``segment_slide`` into a fresh output folder;
- ``extract``: ``extract_slides`` on those coords (truncated ResNet50, random weights, 256 px input);
- ``predict``: ``predict_cases`` end to end into another fresh folder (loads 5 full-size G-HANet fold
  models, segments, extracts, runs the ensemble), without and with ``--heatmaps``.

Prints a markdown table (min / median over repeats) and the overhead ``predict - (segment + extract)``.
Usage: ``python benchmarks/bench_predict.py [--repeats 2] [--width 6144 --height 4096] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_run(run_dir: Path, folds: int = 5) -> None:
    import torch

    from ghanet_pipeline.models import create_model, save_checkpoint

    enc = {"encoder": "resnet50_trunc", "weights_sha256": "random:0", "input_size": 256, "target_mpp": 0.5,
           "patch_size": 256}
    fams = ["Tumor Suppressor Genes", "Oncogenes", "Protein Kinases", "Cellular Differentiation",
            "Transcription", "Cytokines and Growth"]
    for k in range(folds):
        torch.manual_seed(k)
        m = create_model("ghanet", in_dim=1024, family_sizes=[40] * 6, n_bins=4).eval()
        save_checkpoint(run_dir / f"fold_{k}", m, {
            "families": fams, "selected": {f: [f"g{i}" for i in range(40)] for f in fams}, "scaler": {},
            "bin_edges_months": [0.0, 12.0, 24.0, 48.0, 120.0], "encoder": enc, "train_risk_median": -2.0,
            "fold": k, "epoch": 20})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--width", type=int, default=6144)
    ap.add_argument("--height", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from ghanet_pipeline.features.extract import ExtractParams, extract_slides
    from ghanet_pipeline.inference.config import PredictConfig
    from ghanet_pipeline.inference.predict import predict_cases
    from ghanet_pipeline.wsi.inputs import SlideSpec
    from ghanet_pipeline.wsi.segment import SegmentParams, segment_slide
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    slide = write_synthetic_slide(root / "biopsy.tif", args.width, args.height, mpp=0.5, seed=4)
    spec = SlideSpec("biopsy", slide, "biopsy")
    make_run(root / "run")
    times: dict[str, list[float]] = {k: [] for k in ("segment", "extract", "predict", "predict --heatmaps")}
    patches = 0
    for r in range(args.repeats):
        out = root / f"stages{r}"
        t = time.perf_counter()
        res = segment_slide(spec, out, SegmentParams())
        times["segment"].append(time.perf_counter() - t)
        patches = int(res.metrics["patches"])
        t = time.perf_counter()
        extract_slides([spec], out, ExtractParams(weights="random", device="cpu", num_workers=0, batch_size=32))
        times["extract"].append(time.perf_counter() - t)
        for key, hm in (("predict", False), ("predict --heatmaps", True)):
            t = time.perf_counter()
            run = predict_cases([spec], root / "run", PredictConfig(out=root / f"{key[-4:]}{r}", weights="random",
                                                                    device="cpu", heatmaps=hm, batch_size=32))
            times[key].append(time.perf_counter() - t)
            assert run.cases[0].status == "done", run.cases[0].message
            stages = run.cases[0].seconds
    print(f"\nSynthetic {args.width}x{args.height} px slide at 0.5 um/px, {patches} patches, CPU, "
          f"{args.threads} torch threads, 5 G-HANet fold models (full size), {args.repeats} repeats\n")
    print("| step | min s | median s |")
    print("|---|---:|---:|")
    for k, v in times.items():
        print(f"| {k} | {min(v):.2f} | {statistics.median(v):.2f} |")
    base = np.array(times["segment"]) + np.array(times["extract"])
    for key in ("predict", "predict --heatmaps"):
        over = np.array(times[key]) - base
        print(f"| {key} - (segment + extract) | {over.min():.2f} | {np.median(over):.2f} |")
    print(f"\nlast predict --heatmaps run, seconds per stage: {stages}")


if __name__ == "__main__":
    main()
