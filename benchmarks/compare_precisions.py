"""Downstream fidelity of int8 bags: G-HANet trained on int8 bags vs on the fp32 bags of the same slides.

Uses a finished ``ghanet demo`` run (``--demo-out``: its fp32 bags, calibrated encoder, manifest and
genomics table). Extracts the same training slides with ``--precision int8`` (the demo's encoder file,
calibration sample from all training slides; into ``<work>/out``, so the demo folder is not changed),
then repeats 5-fold cross-validation over ``--splits`` fold assignments x ``--seeds`` training seeds with
the demo's settings, once on each set of bags, every other setting equal. Per (fold assignment, seed,
validation fold) the c-index difference int8 - fp32 is paired on the same validation cases: printed
with its 95 % t-interval over the pairs, next to each side's mean and interval (the seed-to-seed
spread). Per replicate, the out-of-fold risks of all cases (``predictions.csv``) are compared with
Spearman's rank correlation; the minimum and median over replicates are printed. The check that
``--precision auto`` would need (issue 26): the paired interval within the seed-to-seed spread and
every Spearman >= 0.99.

    python benchmarks/compare_precisions.py --demo-out demo-out --splits 3 --seeds 1

Writes ``<work>/compare_precisions.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny bags: one thread per step is fastest (see demo)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_models import cpu_model, t_interval  # noqa: E402


def int8_bags(demo_out: Path, work: Path, fp32_dir: Path) -> Path:
    """Extract the demo's training slides with --precision int8 (the demo's encoder file) into ``work``."""
    import shutil

    data = demo_out / "demo-data"
    weights = next((demo_out / "encoders").glob("*_calibrated.safetensors"))
    out = work / "out"
    if not (out / "segment").exists():
        shutil.copytree(demo_out / "segment", out / "segment")
    subprocess.run([sys.executable, "-m", "ghanet_pipeline", "extract-features", "--manifest", str(data / "manifest.csv"),
                    "--out", str(out), "--weights", str(weights), "--precision", "int8", "--device", "cpu",
                    "--no-progress"], check=True)
    found = sorted((out / "features").glob(f"{fp32_dir.name}_int8"))
    if not found:
        raise SystemExit(f"no int8 bags under {out / 'features'}")
    return found[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo-out", type=Path, default=Path("demo-out"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/ghanet-compare-precisions"))
    ap.add_argument("--splits", type=int, default=3, help="fold assignments (preprocess-genomics seeds 0..n-1)")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per fold assignment")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--train-args", default="accum=4,lr=5e-4,dim=128", help="TrainConfig overrides (the demo's)")
    args = ap.parse_args()

    import torch

    from ghanet_pipeline.genomics.config import GenomicsConfig
    from ghanet_pipeline.genomics.pipeline import preprocess_genomics
    from ghanet_pipeline.training.config import TrainConfig
    from ghanet_pipeline.training.cv import train_cv

    torch.set_num_threads(1)
    data = args.demo_out / "demo-data"
    fp32 = sorted(d for d in (args.demo_out / "features").iterdir() if d.is_dir() and not d.name.endswith("_int8"))[-1]
    int8 = int8_bags(args.demo_out, args.work, fp32)
    over: dict[str, float | int] = {}
    for kv in args.train_args.split(","):
        k, v = kv.split("=")
        over[k] = int(v) if v.isdigit() else float(v)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}; fp32 bags {fp32}, "
          f"int8 bags {int8}; {args.splits} x {args.seeds} replicates, {args.folds} folds, {args.epochs} epochs, {over}",
          flush=True)
    rows, rhos = [], []
    t_start = time.perf_counter()
    for s in range(args.splits):
        gdir = args.work / f"split{s}"
        preprocess_genomics(GenomicsConfig(table=str(data / "genomics_table.csv"), families=str(data / "families.csv"),
                                           folds=args.folds, seed=s), gdir)
        for t in range(args.seeds):
            risks = {}
            for label, feats in (("fp32", fp32), ("int8", int8)):
                cfg = TrainConfig(model="ghanet", epochs=args.epochs, seed=t, device="cpu", **over)
                res = train_cv(feats, gdir / "genomics", gdir, cfg, run_name=f"{label}_seed{t}", resume=True)
                per_fold = {int(k): v for k, v in (res.metrics or {}).get("c_index_per_fold", {}).items()}
                rows.append({"bags": label, "split": s, "seed": t, "per_fold": per_fold})
                pred = pd.read_csv(res.run_dir / "predictions.csv")
                risks[label] = pred.set_index("case_id")["risk"]
            both = pd.concat(risks, axis=1).dropna()
            rho = float(both["fp32"].rank().corr(both["int8"].rank()))
            rhos.append(rho)
            print(f"  split {s} seed {t}: out-of-fold risks Spearman int8 vs fp32 {rho:.4f} ({len(both)} cases)",
                  flush=True)
    pairs = {(r["split"], r["seed"], k): v for r in rows if r["bags"] == "fp32" for k, v in r["per_fold"].items()
             if v is not None}
    diff = [r["per_fold"][k] - pairs[(r["split"], r["seed"], k)] for r in rows if r["bags"] == "int8"
            for k in r["per_fold"] if r["per_fold"][k] is not None and (r["split"], r["seed"], k) in pairs]
    summary = {}
    print("\n| bags | seed x fold pairs | mean c-index | 95 % CI (t) |\n|---|---:|---:|---|")
    for label in ("fp32", "int8"):
        vals = [v for r in rows if r["bags"] == label for v in r["per_fold"].values() if v is not None]
        m, lo, hi = t_interval(vals)
        summary[label] = {"mean": m, "ci95": [lo, hi], "n": len(vals)}
        print(f"| {label} | {len(vals)} | {m:.3f} | [{lo:.3f}, {hi:.3f}] |")
    m, lo, hi = t_interval(diff)
    summary["int8 - fp32"] = {"mean": m, "ci95": [lo, hi], "n_pairs": len(diff)}
    summary["spearman_oof_risks"] = {"min": min(rhos), "median": float(np.median(rhos)), "per_replicate": rhos}
    print(f"\npaired difference int8 - fp32: {m:+.4f}, 95 % CI [{lo:+.4f}, {hi:+.4f}] over {len(diff)} seed x fold pairs")
    print(f"Spearman of out-of-fold risks int8 vs fp32: min {min(rhos):.4f}, median {np.median(rhos):.4f} over "
          f"{len(rhos)} replicates; total {time.perf_counter() - t_start:.0f} s, load average {os.getloadavg()[0]:.1f}")
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "compare_precisions.json").write_text(json.dumps(
        {"cpu": cpu_model(), "args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
         "replicates": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
