"""G-HANet vs ABMIL vs a shuffled-survival control on the demo's planted-signal cohort.

Uses the bags and tables of a finished ``ghanet demo`` run (``--demo-out``, default ``demo-out``) and
repeats the cross-validation over several fold assignments (``--splits``: preprocess-genomics seeds) and
training seeds (``--seeds``). Each replicate = one (fold assignment, training seed) pair, scored per
validation fold (final epoch, protocol ``ghanet``). Per model the script prints the mean c-index over
all seed x fold pairs with a 95 % t-interval over those pairs (and, more conservative, over the
replicates' fold means), and the paired difference G-HANet - ABMIL on the same validation fold with its
95 % t-interval. The pairs share one cohort and overlapping training sets, so the intervals describe
seed/split variability on *this* cohort, not the sampling of new patients. The control trains G-HANet (``--control-model``) on
the same bags with the survival (months, censorship) permuted across cases (seeded per fold assignment)
and is scored against those permuted labels: its c-index must stay near 0.5, or the protocol leaks.

    python -m benchmarks.compare_models --demo-out demo-out --splits 3 --seeds 2

Prints a partial table after each fold assignment; at the end writes the record (bench ``compare_models``,
every replicate's per-fold c-index in its ``data``) and ``<work>/compare_models.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import cv_replicates as cv
from benchmarks.harness import Bench
from ghanet_pipeline.evaluation.paired import t_interval


def shuffled_table(table: Path, dest: Path, seed: int) -> Path:
    """The genomics table with (survival_months, censorship) permuted across cases (rows of one case
    keep one value)."""
    import numpy as np
    import pandas as pd

    df = pd.read_csv(table)
    cases = df.drop_duplicates("case_id").set_index("case_id")[["survival_months", "censorship"]]
    perm = np.random.default_rng(seed).permutation(len(cases))
    new = pd.DataFrame(cases.to_numpy()[perm], index=cases.index, columns=cases.columns)
    df["survival_months"] = df["case_id"].map(new["survival_months"]).astype(float)
    df["censorship"] = df["case_id"].map(new["censorship"]).astype(int)
    dest.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(dest, index=False)
    return dest


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Print the Markdown table and the paired difference of the replicates so far; return the summary."""
    import pandas as pd

    df = pd.DataFrame(rows)
    summary: dict[str, dict] = {}
    print("\n| model | replicates | seed x fold pairs | mean c-index | 95 % CI (t, seed x fold) | "
          "95 % CI (t, replicates) |")
    print("|---|---:|---:|---:|---|---|")
    for label, sub in df.groupby("model", sort=False):
        folds = [v for d in sub["per_fold"] for v in d.values() if v is not None]
        m, lo, hi = t_interval(folds)
        _, rlo, rhi = t_interval(sub["mean"].tolist())
        summary[label] = {"mean": m, "ci95_folds": [lo, hi], "ci95_replicates": [rlo, rhi],
                          "n_replicates": len(sub), "n_folds": len(folds)}
        print(f"| {label} | {len(sub)} | {len(folds)} | {m:.3f} | [{lo:.3f}, {hi:.3f}] | [{rlo:.3f}, {rhi:.3f}] |")
    # paired by (fold assignment, seed, fold): the same validation cases
    d = cv.paired(rows, "model", "G-HANet", "ABMIL")
    m, lo, hi = d.mean, d.lo, d.hi
    gr = df[df.model == "G-HANet"].set_index(["split", "seed"])["mean"]
    ar = df[df.model == "ABMIL"].set_index(["split", "seed"])["mean"]
    rdiff = (gr - ar).dropna().tolist()
    _, rlo, rhi = t_interval(rdiff)
    summary["G-HANet - ABMIL"] = {"mean": m, "ci95_folds": [lo, hi], "ci95_replicates": [rlo, rhi],
                                  "n_pairs": d.n, "ghanet_higher": d.a_higher, "ties": d.ties}
    print(f"\npaired difference G-HANet - ABMIL: {m:+.3f}, 95 % CI [{lo:+.3f}, {hi:+.3f}] (t-interval over "
          f"{d.n} seed x fold pairs; G-HANet higher in {d.a_higher}, ties {d.ties}); over the {len(rdiff)} "
          f"replicate means: [{rlo:+.3f}, {rhi:+.3f}]")
    return summary


def replicate(label: str, model: str, root: Path, features: Path, t: int, args: argparse.Namespace,
              over: dict[str, float | int], s: int) -> dict:
    """Train one 5-fold replicate (resumable) and return its per-fold c-index row."""
    import numpy as np

    per_fold, _, secs = cv.cross_validate(features, root, model, t, args, over, run_name=f"{model}_seed{t}")
    vals = [v for v in per_fold.values() if v is not None]
    row = {"model": label, "split": s, "seed": t, "per_fold": per_fold,
           "mean": float(np.mean(vals)) if vals else float("nan"), "seconds": secs}
    print(f"  split {s} seed {t} {label}: mean c-index {row['mean']:.3f} ({row['seconds']:.0f} s)", flush=True)
    return row


def fill_record(bench: Bench, summary: dict[str, dict], rows: list[dict]) -> None:
    """Rows per model and for the paired difference; every replicate's per-fold c-index in the record's data."""
    for label, sm in summary.items():
        paired = label == "G-HANet - ABMIL"
        sign = "+" if paired else ""
        bench.row(model=f"{label} (paired, same validation folds)" if paired else label,
                  replicates=sm.get("n_replicates"), pairs=sm.get("n_folds", sm.get("n_pairs")), c_index=sm["mean"],
                  ci95_pairs=cv.ci_text(sm["ci95_folds"], sign), ci95_replicates=cv.ci_text(sm["ci95_replicates"], sign))
    d = summary["G-HANet - ABMIL"]
    bench.note(f"G-HANet higher in {d['ghanet_higher']} of {d['n_pairs']} seed x fold pairs, ties {d['ties']}")
    means: dict[str, list[str]] = {}
    for r in rows:
        means.setdefault(r["model"], []).append(f"{r['mean']:.3f}")
    bench.note("replicate means: " + "; ".join(f"{k} {', '.join(v)}" for k, v in means.items()))
    bench.data["replicates"] = rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cv.add_replicate_args(ap, work="/tmp/ghanet-compare", seeds=2)
    ap.add_argument("--control-model", default="ghanet", choices=["ghanet", "abmil"],
                    help="model trained on the shuffled survival (abmil: ~5x cheaper on CPU)")
    args = ap.parse_args(argv)
    cv.single_threaded()
    feats = cv.demo_bag_folders(args.demo_out)
    if not feats:
        print(f"no demo outputs under {args.demo_out}: run `ghanet demo --out {args.demo_out}` first", file=sys.stderr)
        return 2
    features, data = feats[-1], args.demo_out / "demo-data"
    over = cv.train_overrides(args.train_args)
    print(f"features {features}; {args.splits} fold assignments x {args.seeds} seeds, {args.folds} folds, "
          f"{args.epochs} epochs, {over}", flush=True)

    names = {"ghanet": "G-HANet", "abmil": "ABMIL"}
    rows: list[dict] = []
    with Bench("compare_models", "G-HANet vs ABMIL vs a shuffled-survival control on the demo's planted cohort",
               args, units={"replicates": "", "pairs": "", "c_index": ""},
               labels={"pairs": "seed x fold pairs", "c_index": "mean c-index", "ci95_pairs": "95 % CI (t, seed x fold)",
                       "ci95_replicates": "95 % CI (t, replicates)"}) as bench:
        for s in range(args.splits):
            gdir = cv.fold_assignment(args.demo_out, args.work / f"split{s}", args.folds, s)
            shuf = shuffled_table(data / "genomics_table.csv", args.work / f"shuffled_{s}.csv", seed=1000 + s)
            cdir = cv.fold_assignment(args.demo_out, args.work / f"split{s}_shuffled", args.folds, s, table=shuf)
            for t in range(args.seeds):
                for label, model, root in (("G-HANet", "ghanet", gdir), ("ABMIL", "abmil", gdir),
                                           (f"shuffled-survival control ({names[args.control_model]})",
                                            args.control_model, cdir)):
                    rows.append(replicate(label, model, root, features, t, args, over, s))
            summarise(rows)  # partial results after each fold assignment
            sys.stdout.flush()
        summary = summarise(rows)
        fill_record(bench, summary, rows)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "compare_models.json").write_text(json.dumps(
        {"record": str(bench.path), "args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
         "replicates": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
