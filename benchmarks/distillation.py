"""Does histo-genomic distillation help where it must? G-HANet vs its ablations on the controlled cohort.

The cohort (``ghanet_pipeline/demo/distill_cohort.py``, docs/fidelity.md "The controlled distillation
experiment"): prognosis driven by the share of a rare, subtle patch type; planted genes follow the same
share with little noise; few cases, heavy censoring. Each seed draws a new cohort, makes 5 seeded folds
and trains four arms on the same folds with the library's ``train_cv`` (``distill_experiment.ARMS``):
G-HANet, G-HANet with distillation weight 0, ABMIL, G-HANet with gene targets shuffled across cases.
Pairs = seed x fold. Prints per-arm means and the paired differences with 95 % t-intervals, and writes
the JSON (``--json``) with at least::

    {"pairs": n, "ghanet_minus_nodistill": {"mean", "lo", "hi"}, "ghanet_minus_abmil": {...},
     "shuffled_minus_nodistill": {...}, "attention_auc": {"ghanet": a, "abmil": b}}

``--sweep cases|censoring --sweep-values ...`` repeats G-HANet and the no-distillation ablation over one
axis (``--sweep-seeds``) and adds a ``sweep`` table: where distillation stops mattering.

    python benchmarks/distillation.py --seeds 0-2 --json distill.json
    python benchmarks/distillation.py --seeds 0-2 --sweep cases --sweep-values 30,60,120 --json distill.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny bags: one thread per step is fastest

#: training options of the experiment (small and fast; the paper's loss, weights and sampler)
DEFAULT_TRAIN = "epochs=20,accum=4,lr=1e-3,dim=64"


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,5"`` -> [0, 3, 5]."""
    if "-" in text:
        a, b = text.split("-", 1)
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",") if s]


def parse_options(text: str) -> dict[str, float | int]:
    """``"epochs=20,lr=1e-3"`` -> TrainConfig keyword arguments."""
    out: dict[str, float | int] = {}
    for kv in filter(None, text.split(",")):
        k, v = kv.split("=")
        out[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    return out


def _fmt(d: dict | None) -> str:
    if not d:
        return "n/a"
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def print_summary(s: dict, title: str) -> None:
    """Markdown tables of one summary (``distill_experiment.summarise``)."""
    from ghanet_pipeline.demo.distill_experiment import CONTRASTS

    def cell(v: dict, k: str) -> str:
        return f"{v[k]['mean']:.3f} [{v[k]['lo']:.3f}, {v[k]['hi']:.3f}]" if k in v else "-"

    print(f"\n### {title} ({s['pairs']} seed x fold pairs)\n")
    print("| arm | test c-index | test latent c-index | validation-fold c-index | attention AUC (test) | "
          "planted-gene Spearman (validation) |")
    print("|---|---|---|---|---|---|")
    for arm, v in s["arms"].items():
        keys = ("c_test", "c_test_latent", "c_index", "attention_auc", "planted_spearman")
        print(f"| {arm} | " + " | ".join(cell(v, k) for k in keys) + " |")
    print("\n| paired difference | test c-index | test latent c-index | validation-fold c-index |\n|---|---|---|---|")
    for key in CONTRASTS:
        print(f"| {key} | {_fmt(s.get(key))} | {_fmt(s['latent'].get(key))} | {_fmt(s['cv_fold'].get(key))} |")
    print(f"| attention AUC ghanet_minus_abmil | {_fmt(s['attention_auc'].get('ghanet_minus_abmil'))} | | |")
    sys.stdout.flush()


def spec_dir(work: Path, spec) -> Path:
    """The folder of one cohort design under ``--work`` (shared by the main run and the sweep, so separate
    invocations resume each other's finished trainings)."""
    return work / f"cases{spec.n_cases}_censoring{spec.censoring:g}"


def run(spec, seeds: list[int], work: Path, train: dict, arms: tuple[str, ...], folds: int, n_test: int
        ) -> list[dict]:
    """All replicates of one cohort spec (each seed in its own folder, resumable)."""
    from ghanet_pipeline.demo.distill_experiment import run_replicate

    rows: list[dict] = []
    for seed in seeds:
        rows += run_replicate(spec, seed, work / f"seed{seed}", train, arms=arms, folds=folds, n_test=n_test,
                              log=lambda m: print(m, flush=True))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0-2", help="replicates: a range A-B or a list (each: cohort, folds, training)")
    ap.add_argument("--cases", type=int, default=None, help="cases per cohort (default: the spec's)")
    ap.add_argument("--censoring", type=float, default=None, help="censored fraction (default: the spec's)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--test-cases", type=int, default=400, help="cases of the external test cohort per seed")
    ap.add_argument("--train-args", default=DEFAULT_TRAIN, help="TrainConfig overrides")
    ap.add_argument("--arms", default="ghanet,nodistill,abmil,shuffled", help="arms of the main run")
    ap.add_argument("--sweep", choices=["cases", "censoring"], default=None)
    ap.add_argument("--sweep-values", default=None, help="comma-separated values of the sweep axis")
    ap.add_argument("--sweep-seeds", default=None, help="seeds of the sweep (default: --seeds)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ghanet-distill"))
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from ghanet_pipeline.demo.distill_cohort import DistillCohortSpec
    from ghanet_pipeline.demo.distill_experiment import ARMS, summarise
    from ghanet_pipeline.features.runtime import cpu_info

    torch.set_num_threads(1)
    spec = DistillCohortSpec()
    if args.cases is not None:
        spec = replace(spec, n_cases=args.cases)
    if args.censoring is not None:
        spec = replace(spec, censoring=args.censoring)
    spec.validate()
    train = parse_options(args.train_args)
    seeds = parse_seeds(args.seeds)
    print(f"CPU: {cpu_info().model} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}; "
          f"seeds {seeds}; spec {asdict(spec)}; train {train}", flush=True)
    t0 = time.perf_counter()
    arms = tuple(a for a in args.arms.split(",") if a)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    rows = run(spec, seeds, spec_dir(args.work, spec), train, arms, args.folds, args.test_cases)
    summary = summarise(rows)
    print_summary(summary, f"default cohort, {spec.n_cases} cases, censoring {spec.censoring}")
    result = {**summary, "spec": asdict(spec), "train": train, "seeds": seeds, "rows": rows}

    if args.sweep:
        values = [float(v) for v in (args.sweep_values or "").split(",") if v]
        if not values:
            ap.error("--sweep needs --sweep-values")
        sweep = []
        for v in values:
            sub = replace(spec, **({"n_cases": int(v)} if args.sweep == "cases" else {"censoring": v}))
            sub_rows = rows if sub == spec else run(sub, parse_seeds(args.sweep_seeds or args.seeds),
                                                    spec_dir(args.work, sub), train,
                                                    ("ghanet", "nodistill"), args.folds, args.test_cases)
            s = summarise([r for r in sub_rows if r["arm"] in ("ghanet", "nodistill")])
            sweep.append({"axis": args.sweep, "value": v, "pairs": s["pairs"],
                          "ghanet": s["arms"]["ghanet"]["c_test"], "nodistill": s["arms"]["nodistill"]["c_test"],
                          "ghanet_minus_nodistill": s["ghanet_minus_nodistill"],
                          "latent_ghanet_minus_nodistill": s["latent"]["ghanet_minus_nodistill"],
                          "cv_fold_ghanet_minus_nodistill": s["cv_fold"]["ghanet_minus_nodistill"]})
            print(f"sweep {args.sweep}={v:g}: G-HANet - no distillation {_fmt(s['ghanet_minus_nodistill'])} "
                  f"(latent {_fmt(s['latent']['ghanet_minus_nodistill'])})", flush=True)
        result["sweep"] = sweep
        print(f"\n| {args.sweep} | pairs | G-HANet (test c-index) | no distillation | difference (95 % CI) | "
              f"latent difference | validation-fold difference |")
        print("|---:|---:|---:|---:|---|---|---|")
        for r in sweep:
            print(f"| {r['value']:g} | {r['pairs']} | {r['ghanet']['mean']:.3f} | {r['nodistill']['mean']:.3f} | "
                  f"{_fmt(r['ghanet_minus_nodistill'])} | {_fmt(r['latent_ghanet_minus_nodistill'])} | "
                  f"{_fmt(r['cv_fold_ghanet_minus_nodistill'])} |")

    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["cpu"] = cpu_info().model
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=float))
    print(f"\ntotal {result['seconds']:.0f} s; load average now {os.getloadavg()[0]:.1f}; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
