"""Downstream fidelity of int8 bags (G-HANet trained on int8 bags vs on the fp32 bags of the same slides);
with ``--compare train-bf16``, of bf16 training (the same fp32 bags trained with ``precision`` bf16 vs fp32);
with ``--compare seed``, the control both are judged against: fp32 vs fp32, the same bags and settings, only
the training seed differs (``SEED_OFFSET`` added). It shows how alike two equally valid fp32 trainings rank
the cases, i.e. whether the Spearman gate below can be met by any change at all.

Uses a finished ``ghanet demo`` run (``--demo-out``: its fp32 bags, calibrated encoder, manifest and
genomics table). Extracts the same training slides with ``--precision int8`` (the demo's encoder file,
calibration sample from all training slides; into ``<work>/out``, so the demo folder is not changed),
then repeats k-fold cross-validation over ``--splits`` fold assignments x ``--seeds`` training seeds with
the demo's settings, once on each set of bags, every other setting equal (the same options and replicate
loop as ``compare_models``, :mod:`benchmarks.cv_replicates`). Per (fold assignment, seed, validation fold)
the c-index difference int8 - fp32 is paired on the same validation cases: recorded with its 95 %
t-interval over the pairs, next to each side's mean and interval (the seed-to-seed spread). Per replicate,
the out-of-fold risks of all cases (``predictions.csv``) are compared with Spearman's rank correlation.
The check that ``--precision auto`` would need (issue 26): the paired interval within the seed-to-seed
spread and every Spearman >= 0.99.

    python -m benchmarks.compare_precisions --demo-out demo-out --splits 3 --seeds 1
    python -m benchmarks.compare_precisions --compare train-bf16 --demo-out demo-out --splits 3 --seeds 1

``seed`` and ``train-bf16`` need no extraction: both arms train on the demo's fp32 bags, one with ``TrainConfig.precision``
bf16 (autocast), the other fp32 (issue 26 item 5: what ``train --precision auto`` would need).

Writes the record (bench ``compare_precisions``, or ``train_precision`` for ``train-bf16``: table ``main`` the
c-index per arm and the paired difference, table ``spearman`` one row per replicate; every replicate's per-fold c-index in its ``data``) and
``<work>/<record name>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import cv_replicates as cv
from benchmarks.harness import Bench
from ghanet_pipeline.evaluation.paired import t_interval

SPEARMAN_GATE = 0.99
#: ``--compare seed``: the second fp32 arm trains with seed ``t + SEED_OFFSET`` (replicate seed ``t``)
SEED_OFFSET = 1000


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


def bag_precisions(folder: Path, manifest: Path) -> set[str]:
    """The ``precision`` attrs of the bags in ``folder`` of the slides in the demo's training ``manifest``
    (the int8 comparison needs fp32 ones; the held-out slides' bags are not trained on)."""
    import csv

    from ghanet_pipeline.features.bags import read_bag_attrs

    with open(manifest, newline="", encoding="utf-8") as fh:
        ids = [row["slide_id"] for row in csv.DictReader(fh)]
    return {str(read_bag_attrs(folder / f"{i}.h5").get("precision", "fp32")) for i in ids if (folder / f"{i}.h5").is_file()}


#: what ``--compare`` pits against fp32: (the other arm's label, record name, record title)
COMPARISONS = {"int8": ("int8", "compare_precisions", "G-HANet on int8 bags vs on fp32 bags of the demo's slides"),
               "train-bf16": ("bf16", "train_precision",
                              "G-HANet trained with bf16 autocast vs fp32 on the demo's fp32 bags"),
               "seed": ("reseeded", "seed_control",
                        f"Seed-to-seed control: G-HANet fp32 trained with seed t vs t + {SEED_OFFSET} on the demo's "
                        f"fp32 bags")}


def replicate(arms: dict[str, tuple[Path, dict]], gdir: Path, s: int, t: int, args: argparse.Namespace,
              over: dict[str, float | int | str]) -> tuple[list[dict], dict]:
    """One (fold assignment, seed): G-HANet in each arm (its bags and extra TrainConfig fields, where
    ``seed_offset`` shifts that arm's training seed); their per-fold rows and the Spearman row of their
    out-of-fold risks (the second arm against fp32)."""
    import pandas as pd

    rows, risks = [], {}
    for label, (feats, extra) in arms.items():
        fields = {k: v for k, v in extra.items() if k != "seed_offset"}
        per_fold, res, secs = cv.cross_validate(feats, gdir, "ghanet", t + int(extra.get("seed_offset", 0)), args,
                                                {**over, **fields}, run_name=f"{label}_seed{t}")
        rows.append({"bags": label, "split": s, "seed": t, "per_fold": per_fold, "seconds": secs})
        risks[label] = pd.read_csv(res.run_dir / "predictions.csv").set_index("case_id")["risk"]
    other = [a for a in arms if a != "fp32"][0]
    both = pd.concat(risks, axis=1).dropna()
    rho = float(both["fp32"].rank().corr(both[other].rank()))
    print(f"  split {s} seed {t}: out-of-fold risks Spearman {other} vs fp32 {rho:.4f} ({len(both)} cases)", flush=True)
    return rows, {"split": s, "seed": t, "cases": len(both), "spearman": rho}


def summarise(rows: list[dict], rhos: list[dict], other: str = "int8") -> dict[str, dict]:
    """Mean and 95 % t-interval per arm over the seed x fold pairs, the paired difference, the Spearman range."""
    import numpy as np

    summary: dict[str, dict] = {}
    for label in ("fp32", other):
        vals = [v for r in rows if r["bags"] == label for v in r["per_fold"].values() if v is not None]
        m, lo, hi = t_interval(vals)
        summary[label] = {"mean": m, "ci95": [lo, hi], "n": len(vals)}
    d = cv.paired(rows, "bags", other, "fp32")
    summary[f"{other} - fp32"] = {"mean": d.mean, "ci95": [d.lo, d.hi], "n": d.n}
    per = [r["spearman"] for r in rhos]
    summary["spearman_oof_risks"] = {"min": min(per), "median": float(np.median(per)), "per_replicate": per}
    return summary


def fill_record(bench: Bench, summary: dict[str, dict], rows: list[dict], rhos: list[dict],
                other: str = "int8") -> None:
    """Table ``main``: c-index per arm and the paired difference; table ``spearman``: one row per replicate."""
    for label in ("fp32", other, f"{other} - fp32"):
        sm, paired = summary[label], label == f"{other} - fp32"
        bench.row(bags=f"{label} (paired, same validation folds)" if paired else label, pairs=sm["n"],
                  c_index=sm["mean"], ci95=cv.ci_text(sm["ci95"], "+" if paired else ""))
    sp = summary["spearman_oof_risks"]
    ok = all(r >= SPEARMAN_GATE for r in sp["per_replicate"])
    bench.note(f"Spearman of out-of-fold risks {other} vs fp32: min {sp['min']:.4f}, median {sp['median']:.4f} over "
               f"{len(sp['per_replicate'])} replicate(s); every one >= {SPEARMAN_GATE}: {'yes' if ok else 'no'}")
    for r in rhos:
        bench.row("spearman", split=r["split"], seed=r["seed"], cases=r["cases"], spearman=r["spearman"])
    bench.data["replicates"] = rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cv.add_replicate_args(ap, work="/tmp/ghanet-compare-precisions", seeds=1)
    ap.add_argument("--compare", choices=sorted(COMPARISONS), default="int8",
                    help="int8: int8 bags vs fp32 bags; train-bf16: bf16 vs fp32 training on the fp32 bags; seed: "
                         "fp32 vs fp32 with another training seed (the control)")
    args = ap.parse_args(argv)
    cv.single_threaded()
    feats = [d for d in cv.demo_bag_folders(args.demo_out) if not d.name.endswith("_int8")]
    if not feats:
        print(f"no demo outputs under {args.demo_out}: run `ghanet demo --out {args.demo_out}` first", file=sys.stderr)
        return 2
    over = cv.train_overrides(args.train_args)
    units = {"pairs": "", "c_index": "", "split": "", "seed": "", "cases": "", "spearman": ""}
    labels = {"pairs": "seed x fold pairs", "c_index": "mean c-index", "ci95": "95 % CI (t, seed x fold)",
              "split": "fold assignment", "spearman": "Spearman of out-of-fold risks"}
    other, name, title = COMPARISONS[args.compare]
    manifest = args.demo_out / "demo-data" / "manifest.csv"
    if args.compare == "int8" and (got := bag_precisions(feats[-1], manifest)) != {"fp32"}:
        print(f"the demo's bags in {feats[-1]} are {', '.join(sorted(got))}, not fp32 (on a CPU with AMX or a GPU the "
              f"demo's --precision auto makes bf16 bags): re-extract them first with `ghanet extract-features "
              f"--manifest {manifest} --out {args.demo_out} --weights <the demo's "
              f"encoders/*_calibrated.safetensors> --precision fp32 --overwrite`", file=sys.stderr)
        return 2
    with Bench(name, title, args, units=units, labels=labels) as bench:
        if args.compare == "int8":
            arms = {"fp32": (feats[-1], {}), "int8": (int8_bags(args.demo_out, args.work, feats[-1]), {})}
        elif args.compare == "seed":
            arms = {"fp32": (feats[-1], {"precision": "fp32"}),
                    other: (feats[-1], {"precision": "fp32", "seed_offset": SEED_OFFSET})}
        else:
            arms = {"fp32": (feats[-1], {"precision": "fp32"}), "bf16": (feats[-1], {"precision": "bf16"})}
        print(f"arms {arms}; {args.splits} x {args.seeds} replicates, {args.folds} folds, {args.epochs} epochs, "
              f"{over}", flush=True)
        rows: list[dict] = []
        rhos: list[dict] = []
        for s in range(args.splits):
            gdir = cv.fold_assignment(args.demo_out, args.work / f"split{s}", args.folds, s)
            for t in range(args.seeds):
                got, rho = replicate(arms, gdir, s, t, args, over)
                rows += got
                rhos.append(rho)
        summary = summarise(rows, rhos, other)
        fill_record(bench, summary, rows, rhos, other)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / f"{name}.json").write_text(json.dumps(
        {"record": str(bench.path), "args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
         "replicates": rows, "spearman": rhos}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
