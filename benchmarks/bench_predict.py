"""How much slower is ``ghanet predict`` than feature extraction alone on a biopsy-sized slide (CPU)?

In one run, on the same synthetic slide, device and thread settings:

- ``segment``: ``segment_slide`` into a fresh output folder;
- ``extract``: ``extract_slides`` on those coords (truncated ResNet50, random weights, 256 px input);
- ``predict``: ``predict_cases`` end to end into another fresh folder (loads 5 full-size G-HANet fold
  models, segments, extracts, runs the ensemble), without and with ``--heatmaps``.

Record: bench ``predict`` (min / median over repeats, and the overhead ``predict - (segment + extract)``).
Usage: ``python -m benchmarks.bench_predict [--repeats 2] [--width 6144 --height 4096] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Bench, add_record_args, stats

FAMILIES = ["Tumor Suppressor Genes", "Oncogenes", "Protein Kinases", "Cellular Differentiation", "Transcription",
            "Cytokines and Growth"]


def make_run(run_dir: Path, folds: int = 5) -> None:
    """A training run folder of ``folds`` full-size G-HANet checkpoints (random weights)."""
    import torch

    from ghanet_pipeline.models import create_model, save_checkpoint

    enc = {"encoder": "resnet50_trunc", "weights_sha256": "random:0", "input_size": 256, "target_mpp": 0.5,
           "patch_size": 256}
    for k in range(folds):
        torch.manual_seed(k)
        m = create_model("ghanet", in_dim=1024, family_sizes=[40] * 6, n_bins=4).eval()
        save_checkpoint(run_dir / f"fold_{k}", m, {
            "families": FAMILIES, "selected": {f: [f"g{i}" for i in range(40)] for f in FAMILIES}, "scaler": {},
            "bin_edges_months": [0.0, 12.0, 24.0, 48.0, 120.0], "encoder": enc, "train_risk_median": -2.0,
            "fold": k, "epoch": 20})


def one_round(root: Path, spec, r: int) -> tuple[dict[str, float], int, dict]:  # noqa: ANN001
    """Seconds of segment, extract, predict and predict --heatmaps in fresh folders; patches; predict's stages."""
    from ghanet_pipeline.features.extract import ExtractParams, extract_slides
    from ghanet_pipeline.inference.config import PredictConfig
    from ghanet_pipeline.inference.predict import predict_cases
    from ghanet_pipeline.wsi.segment import SegmentParams, segment_slide

    secs: dict[str, float] = {}
    out = root / f"stages{r}"
    t = time.perf_counter()
    res = segment_slide(spec, out, SegmentParams())
    secs["segment"] = time.perf_counter() - t
    t = time.perf_counter()
    extract_slides([spec], out, ExtractParams(weights="random", device="cpu", num_workers=0, batch_size=32))
    secs["extract"] = time.perf_counter() - t
    stages: dict = {}
    for key, hm in (("predict", False), ("predict --heatmaps", True)):
        t = time.perf_counter()
        run = predict_cases([spec], root / "run", PredictConfig(out=root / f"{key[-4:]}{r}", weights="random",
                                                                device="cpu", heatmaps=hm, batch_size=32))
        secs[key] = time.perf_counter() - t
        assert run.cases[0].status == "done", run.cases[0].message
        stages = run.cases[0].seconds
    return secs, int(res.metrics["patches"]), stages


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--width", type=int, default=6144)
    ap.add_argument("--height", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    add_record_args(ap)
    args = ap.parse_args(argv)
    import torch

    from ghanet_pipeline.wsi.inputs import SlideSpec
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp, \
            Bench("predict", "`ghanet predict` vs segment + extract alone, one biopsy-sized slide, CPU", args,
                  units={"seconds": "s"}, labels={"seconds": "time"}) as bench:
        root = Path(tmp)
        slide = write_synthetic_slide(root / "biopsy.tif", args.width, args.height, mpp=0.5, seed=4)
        spec = SlideSpec("biopsy", slide, "biopsy")
        make_run(root / "run")
        rounds = [one_round(root, spec, r) for r in range(args.repeats)]
        times = {k: [r[0][k] for r in rounds] for k in rounds[0][0]}
        for k, v in times.items():
            bench.row(step=k, seconds=stats(v))
        for key in ("predict", "predict --heatmaps"):
            over = [p - s - e for p, s, e in zip(times[key], times["segment"], times["extract"], strict=True)]
            bench.row(step=f"{key} - (segment + extract)", seconds=stats(over))
        bench.note(f"synthetic {args.width}x{args.height} px slide at 0.5 um/px, {rounds[-1][1]} patches, CPU, "
                   f"{args.threads} torch threads, 5 G-HANet fold models (full size), {args.repeats} repeats")
        bench.note("last `predict --heatmaps` run, seconds per stage: "
                   + ", ".join(f"{k} {v:.2f}" for k, v in rounds[-1][2].items()))


if __name__ == "__main__":
    main()
