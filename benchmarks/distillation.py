"""Does histo-genomic distillation help where it must? G-HANet vs its ablations on the controlled cohort.

The cohort (``ghanet_pipeline/demo/distill_cohort.py``, docs/fidelity.md "The controlled distillation
experiment"): prognosis driven by the share of a rare patch type; planted genes follow the same share
with little noise; few cases, heavy censoring. Each seed draws a new cohort and an external test cohort of
the same design, makes 5 seeded folds and trains four arms on the same folds with the library's
``train_cv`` (``distill_experiment.ARMS``): G-HANet, G-HANet with distillation weight 0, ABMIL, G-HANet
with gene targets shuffled across cases. Pairs = seed x fold; every fold model is scored on the seed's
test cohort (primary) and on its own validation fold (secondary). Writes one harness record
(``benchmarks/results/distillation-*.json``) and the JSON of ``--json`` with at least::

    {"pairs": n, "ghanet_minus_nodistill": {"mean", "lo", "hi"}, "ghanet_minus_abmil": {...},
     "shuffled_minus_nodistill": {...}, "attention_auc": {"ghanet": a, "abmil": b}}

``--sweep cases|censoring --sweep-values ...`` repeats G-HANet and the no-distillation ablation over one
axis (``--sweep-seeds``) and adds a ``sweep`` table: where distillation stops mattering. Trainings are
kept under ``--work`` (one folder per design and seed) and resumed, so a sweep or a longer seed range
reuses what an earlier invocation trained.

    python -m benchmarks.distillation --seeds 0-2 --json distill.json
    python -m benchmarks.distillation --seeds 0-2 --sweep censoring --sweep-values 0.7,0.35,0 --sweep-seeds 0 \
        --json distill.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.harness import Bench, add_record_args

#: training options of the experiment (small and fast; the paper's loss, weights and sampler)
DEFAULT_TRAIN = "epochs=20,accum=4,lr=1e-3,dim=64"
#: per-arm scores shown in the record: key -> column heading
ARM_SCORES = {"c_test": "test c-index", "c_test_latent": "test latent c-index", "c_index": "validation-fold c-index",
              "attention_auc": "attention AUC (test)", "planted_spearman": "planted-gene Spearman (validation)"}


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


def ci(d: dict | None, sign: str = "+") -> str:
    """``[lo, hi]`` of an interval dict (``n/a`` without one)."""
    if not d or d.get("lo") is None or d["lo"] != d["lo"]:
        return "n/a"
    return "[{:{s}.3f}, {:{s}.3f}]".format(d["lo"], d["hi"], s=sign)


def spec_dir(work: Path, spec: Any) -> Path:
    """The folder of one cohort design under ``--work`` (shared by the main run and the sweep, so separate
    invocations resume each other's finished trainings)."""
    return work / f"cases{spec.n_cases}_censoring{spec.censoring:g}"


def run(spec: Any, seeds: list[int], work: Path, train: dict, arms: tuple[str, ...], folds: int, n_test: int
        ) -> list[dict]:
    """All replicates of one cohort spec (each seed in its own folder, resumable)."""
    from ghanet_pipeline.demo.distill_experiment import run_replicate

    rows: list[dict] = []
    for seed in seeds:
        rows += run_replicate(spec, seed, work / f"seed{seed}", train, arms=arms, folds=folds, n_test=n_test,
                              log=lambda m: print(m, flush=True))
    return rows


def fill_main(bench: Bench, s: dict) -> None:
    """Rows of the per-arm table (``main``) and of the paired differences (``paired``)."""
    from ghanet_pipeline.demo.distill_experiment import CONTRASTS

    for arm, v in s["arms"].items():
        row = bench.row(arm=arm, pairs=v["c_test"]["n"])
        for key in ARM_SCORES:
            if key in v:
                row[key], row[f"{key}_ci"] = v[key]["mean"], ci(v[key], "")
    diffs = {name: (s.get(name), s["latent"].get(name), s["cv_fold"].get(name)) for name in CONTRASTS}
    diffs["attention AUC ghanet_minus_abmil"] = (s["attention_auc"].get("ghanet_minus_abmil"), None, None)
    for name, (test, latent, cv) in diffs.items():
        if test is None:
            continue
        row = bench.row("paired", difference=name, pairs=test["n"], test=test["mean"], test_ci=ci(test),
                        first_higher=test["a_higher"])
        if name in s["replicates"]:
            row.update(seeds=s["replicates"][name]["n"], test_seeds_ci=ci(s["replicates"][name]))
        if latent:
            row.update(latent=latent["mean"], latent_ci=ci(latent), cv_fold=cv["mean"], cv_fold_ci=ci(cv))


def sweep_rows(args: argparse.Namespace, spec: Any, rows: list[dict], train: dict, bench: Bench) -> list[dict]:
    """G-HANet and the no-distillation ablation at each ``--sweep-values`` point (table ``sweep``)."""
    from ghanet_pipeline.demo.distill_experiment import summarise

    sweep = []
    for v in [float(x) for x in args.sweep_values.split(",") if x]:
        sub = replace(spec, **({"n_cases": int(v)} if args.sweep == "cases" else {"censoring": v}))
        sub_rows = rows if sub == spec else run(sub, parse_seeds(args.sweep_seeds or args.seeds), spec_dir(args.work, sub),
                                                train, ("ghanet", "nodistill"), args.folds, args.test_cases)
        s = summarise([r for r in sub_rows if r["arm"] in ("ghanet", "nodistill")])
        d, lat, cv = s["ghanet_minus_nodistill"], s["latent"]["ghanet_minus_nodistill"], s["cv_fold"]["ghanet_minus_nodistill"]
        sweep.append({"axis": args.sweep, "value": v, "pairs": s["pairs"], "ghanet": s["arms"]["ghanet"]["c_test"],
                      "nodistill": s["arms"]["nodistill"]["c_test"], "ghanet_minus_nodistill": d,
                      "latent_ghanet_minus_nodistill": lat, "cv_fold_ghanet_minus_nodistill": cv})
        point = {args.sweep: int(v) if args.sweep == "cases" else v}
        bench.row("sweep", **point, pairs=s["pairs"], ghanet=s["arms"]["ghanet"]["c_test"]["mean"],
                  nodistill=s["arms"]["nodistill"]["c_test"]["mean"], gap=d["mean"], gap_ci=ci(d),
                  latent=lat["mean"], latent_ci=ci(lat), cv_fold=cv["mean"], cv_fold_ci=ci(cv))
    return sweep


def declare_units(bench: Bench) -> None:
    """Units (all scores are unitless) and column headings of the three tables."""
    labels = {**ARM_SCORES, "pairs": "seed x fold pairs", "test": "test c-index difference",
              "latent": "test latent c-index difference", "cv_fold": "validation-fold c-index difference",
              "first_higher": "pairs where the first is higher", "gap": "G-HANet - no distillation",
              "ghanet": "G-HANet (test c-index)", "nodistill": "no distillation (test c-index)",
              "cases": "cases", "censoring": "censored fraction"}
    for key, label in labels.items():
        bench.unit(key, "", label)
    for key in (*ARM_SCORES, "test", "latent", "cv_fold", "gap"):
        bench.labels[f"{key}_ci"] = "95 % CI"
    bench.unit("seeds", "", "seeds")
    bench.labels["test_seeds_ci"] = "95 % CI over seed means"


def parser() -> argparse.ArgumentParser:
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
    ap.add_argument("--work", type=Path, default=Path("/tmp/ghanet-distill"), help="trainings (kept, resumed)")
    ap.add_argument("--json", type=Path, required=True, help="the summary JSON (issue 27's keys, plus every row)")
    add_record_args(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny bags: one thread per step is fastest
    ap = parser()
    args = ap.parse_args(argv)
    import torch

    from ghanet_pipeline.demo.distill_cohort import DistillCohortSpec
    from ghanet_pipeline.demo.distill_experiment import ARMS, summarise

    torch.set_num_threads(1)
    spec = replace(DistillCohortSpec(), **{k: v for k, v in (("n_cases", args.cases), ("censoring", args.censoring))
                                           if v is not None})
    spec.validate()
    arms = tuple(a for a in args.arms.split(",") if a)
    if [a for a in arms if a not in ARMS]:
        ap.error(f"--arms: unknown {[a for a in arms if a not in ARMS]}; choose from {', '.join(ARMS)}")
    if args.sweep and not args.sweep_values:
        ap.error("--sweep needs --sweep-values")
    train, seeds = parse_options(args.train_args), parse_seeds(args.seeds)
    print(f"seeds {seeds}; spec {asdict(spec)}; train {train}", flush=True)
    title = (f"G-HANet vs its ablations on the controlled distillation cohort ({spec.n_cases} cases, "
             f"censoring {spec.censoring:g}; seeds {args.seeds})")
    with Bench("distillation", title, args) as bench:
        declare_units(bench)
        rows = run(spec, seeds, spec_dir(args.work, spec), train, arms, args.folds, args.test_cases)
        summary = summarise(rows)
        fill_main(bench, summary)
        result = {**summary, "spec": asdict(spec), "train": train, "seeds": seeds, "rows": rows}
        if args.sweep:
            result["sweep"] = sweep_rows(args, spec, rows, train, bench)
        bench.data.update(spec=asdict(spec), train=train, rows=rows, sweep_rows=result.get("sweep", []))
    rec = json.loads(bench.path.read_text()) if bench.path else {}
    result.update(record=str(bench.path), seconds=rec.get("seconds"), cpu=rec.get("machine", {}).get("cpu_model"),
                  load=rec.get("load"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
