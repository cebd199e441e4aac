"""Benchmark: G-HANet training step, inference time and peak memory vs the reference implementation.

One training step = forward + loss (NLL + 0.3 * (MSE + SCE) over the families) + backward + Adam step,
one case, as in training. Implementations, on the same parameters (same seed):

- ``fast``: :class:`ghanet_pipeline.models.GHANet` with the optimiser of ``ghanet train``
  (:func:`ghanet_pipeline.training.state.make_optimizer`);
- ``reference``: :func:`ghanet_pipeline.models.reference.reference_forward` (``plain_dropout=True``),
  written like the authors' released code (keys/values projected for every patch in both
  cross-attention passes, ReLU then ``F.dropout``, dense masked softmax) with plain ``torch.optim.Adam``.

Every ratio printed is measured in this run: each (implementation, size) runs in its own subprocess
(so that its peak RSS, read by the harness with ``wait4``, belongs to it alone), and the processes are interleaved
(``--rounds`` rounds of fast, reference / reference, fast per size) so that load drift on a shared
machine hits both sides alike. Per process: one warm-up step, ``--repeats`` timed steps, one warm-up
and ``--repeats`` timed inference passes. Nothing here is compared with figures from another machine.
After each size, a ``floor`` process times only the matrix products every exact fp32 implementation
must do on that many patches (:func:`floor_worker`): ``floor / reference`` is the lowest ratio any fp32
implementation could reach in this run.

glibc malloc (``--malloc``): ``default`` (the default) runs both sides with the same glibc settings;
``as-run`` gives ``fast`` the malloc tuning ``ghanet train`` applies on CPU (freed memory kept for reuse
instead of being unmapped and page-faulted back on every step:
:func:`ghanet_pipeline.env.runtime.tune_malloc`) and leaves ``reference`` on glibc defaults;
``tuned`` tunes both. ``MALLOC_*`` environment variables (the Makefile exports some) apply to both
sides and are printed.

    python -m benchmarks.bench_train_step [--sizes 1000 10000 30000 100000] [--repeats 2] [--rounds 2]
                                          [--threads 2] [--families 80 0 120 40 60 90] [--malloc default]

Record: bench ``train_step`` (``train_step_as_run`` / ``train_step_tuned`` with ``--malloc``); tables ``main``
(per implementation and size), ``ratios`` (fast / reference, same run), ``floor`` (the required products
alone) and ``adam`` (optimiser kernels).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks.harness import Bench, Rounds, add_record_args, call_worker, emit, interleave, stats

MODULE = "benchmarks.bench_train_step"
FAMILY_SIZES = [80, 0, 120, 40, 60, 90]   # one empty family, like a fold where DE kept no gene


def worker(impl: str, n: int, repeats: int, threads: int, families: list[int], malloc: str) -> dict:
    import torch
    import torch.nn.functional as F

    from ghanet_pipeline.env.runtime import tune_malloc
    from ghanet_pipeline.models import create_model
    from ghanet_pipeline.models.reference import reference_forward
    from ghanet_pipeline.models.survival import nll_loss, sce_loss
    from ghanet_pipeline.training.state import make_optimizer

    torch.set_num_threads(threads)
    if malloc == "tuned" or (malloc == "as-run" and impl == "fast"):
        tune_malloc()
    torch.manual_seed(0)
    model = create_model("ghanet", in_dim=1024, family_sizes=families)
    forward = model if impl == "fast" else (lambda x: reference_forward(model, x, plain_dropout=True))
    opt = (make_optimizer(model, 2e-4, 1e-5) if impl == "fast"
           else torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5))
    features = torch.randn(n, 1024)
    targets = [torch.randn(k) for k in families]
    cpu_s: list[float] = []

    def step() -> float:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        model.train()
        out = forward(features)
        loss = nll_loss(out["hazards"], out["S"], 2, 0)
        recon = sum(F.mse_loss(p, t) + sce_loss(p, t)
                    for p, t in zip(out["recon"], targets, strict=True) if p is not None)
        (loss + 0.3 * recon).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        cpu_s.append(time.process_time() - cpu0)
        return time.perf_counter() - t0

    def infer() -> float:
        t0 = time.perf_counter()
        model.eval()
        with torch.inference_mode():
            forward(features)["risk"].item()
        return time.perf_counter() - t0

    first_s = step()  # warm-up (allocator, Adam state); reported as the first step
    train_s = [step() for _ in range(repeats)]
    infer()
    infer_s = [infer() for _ in range(repeats)]
    return {"impl": impl, "n": n, "first_s": first_s, "train_s": train_s, "train_cpu_s": cpu_s[1:], "infer_s": infer_s}


def adam_worker(repeats: int, threads: int, families: list[int]) -> dict:
    """Seconds per Adam update of G-HANet's parameters: for-loop, foreach and fused kernels, interleaved."""
    import torch

    from ghanet_pipeline.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("ghanet", in_dim=1024, family_sizes=families)
    params = list(model.parameters())
    for prm in params:
        prm.grad = torch.randn_like(prm)
    opts = {kind: torch.optim.Adam(params, lr=2e-4, weight_decay=1e-5, **{kind: True} if kind != "for-loop"
                                   else {"foreach": False})
            for kind in ("for-loop", "foreach", "fused")}
    times: dict[str, list[float]] = {k: [] for k in opts}
    for _ in range(repeats + 1):
        for kind, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[kind].append(time.perf_counter() - t0)
    return {"n_params": sum(prm.numel() for prm in params), **{k: v[1:] for k, v in times.items()}}


def floor_worker(n: int, repeats: int, threads: int) -> dict:
    """Seconds for the matrix products that every exact fp32 G-HANet training step must do on N patches.

    Per patch, whatever the implementation: the two 1024 -> 512 patch embeddings (forward and weight
    gradient: 4 products of N x 1024 x 512) and the survival branch's 512 -> 2 x 256 gate (forward,
    weight gradient, input gradient: 3 products of N x 512 x 512). Nothing else (no cross attention, no
    element-wise work, no optimiser), so ``floor / reference`` bounds from below what any fp32
    implementation of the model can reach against the reference on this CPU.
    """
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, w_embed, bias = torch.randn(n, 1024), torch.randn(512, 1024), torch.randn(512)
    h, w_gate, d_gate = torch.randn(n, 512), torch.randn(512, 512), torch.randn(n, 512)

    def products() -> float:
        t0 = time.perf_counter()
        for _ in range(2):                         # CAB and HSB embeddings: forward, weight gradient
            torch.addmm(bias, x, w_embed.T)
            torch.mm(h.T, x)
        torch.addmm(bias, h, w_gate.T)             # gate: forward, weight gradient, input gradient
        torch.mm(d_gate.T, h)
        torch.mm(d_gate, w_gate)
        return time.perf_counter() - t0

    products()
    return {"impl": "floor", "n": n, "floor_s": [products() for _ in range(max(3, repeats))]}


def run_worker(impl: str, n: int, args: argparse.Namespace) -> dict:
    """One worker process; its result with the process's peak RSS (GiB) added."""
    res, proc = call_worker(MODULE, "--worker", impl, str(n), "--repeats", str(args.repeats), "--threads",
                            str(args.threads), "--malloc", args.malloc, "--families", *map(str, args.families))
    res["peak_rss_gib"] = proc.peak_rss_gib
    print(f"done {impl} N={n}: peak RSS {proc.peak_rss_gib:.2f} GiB, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return res


def _all(runs: Rounds, impl: str, key: str) -> list[float]:
    return [x for run in runs.results[impl] for x in run[key]]


def size_rows(bench: Bench, n: int, runs: Rounds, floor_s: list[float], adam_fused: float | None,
              impls: list[str]) -> None:
    """Rows of the ``main``, ``ratios`` and ``floor`` tables for one size."""
    for impl in impls:
        bench.row(patches=n, impl=impl, train_s=stats(_all(runs, impl, "train_s")),
                  train_cpu_s=min(_all(runs, impl, "train_cpu_s")), first_s=max(r["first_s"] for r in runs.results[impl]),
                  infer_s=stats(_all(runs, impl, "infer_s")), peak_rss_gib=max(r["peak_rss_gib"] for r in runs.results[impl]))
    if {"fast", "reference"} <= set(impls):
        f_tr, r_tr = stats(_all(runs, "fast", "train_s")), stats(_all(runs, "reference", "train_s"))
        per_round = [min(f["train_s"]) / min(r["train_s"])
                     for f, r in zip(runs.results["fast"], runs.results["reference"], strict=True)]
        bench.row(table="ratios", patches=n, train_min=f_tr.min / r_tr.min,
                  per_round=", ".join(f"{v:.2f}" for v in per_round), train_median=f_tr.median / r_tr.median,
                  cpu_min=min(_all(runs, "fast", "train_cpu_s")) / min(_all(runs, "reference", "train_cpu_s")),
                  infer_min=min(_all(runs, "fast", "infer_s")) / min(_all(runs, "reference", "infer_s")),
                  rss=max(r["peak_rss_gib"] for r in runs.results["fast"])
                  / max(r["peak_rss_gib"] for r in runs.results["reference"]))
    if "reference" in impls:
        ref = min(_all(runs, "reference", "train_s"))
        row = bench.row(table="floor", patches=n, floor_s=min(floor_s), floor_vs_ref=min(floor_s) / ref)
        if adam_fused is not None:
            row["floor_adam_vs_ref"] = (min(floor_s) + adam_fused) / ref
        if "fast" in impls:
            row["fast_vs_ref"] = min(_all(runs, "fast", "train_s")) / ref


UNITS = {"patches": "", "train_s": "s", "train_cpu_s": "s", "first_s": "s", "infer_s": "s", "peak_rss_gib": "GiB",
         "train_min": "x", "train_median": "x", "cpu_min": "x", "infer_min": "x", "rss": "x", "floor_s": "s",
         "floor_vs_ref": "x", "floor_adam_vs_ref": "x", "fast_vs_ref": "x", "n_params": "", "for_loop": "s",
         "foreach": "s", "fused": "s"}
LABELS = {"train_s": "train step (s)", "train_cpu_s": "train step CPU, min (s)", "first_s": "first step (s)",
          "infer_s": "inference (s)", "peak_rss_gib": "peak RSS (GiB)", "train_min": "train step (min)",
          "per_round": "per round (min of each process)", "train_median": "train step (median)",
          "cpu_min": "train step CPU (min)", "infer_min": "inference (min)", "rss": "peak RSS",
          "floor_s": "required products, min (s)", "floor_vs_ref": "floor / reference (min)",
          "floor_adam_vs_ref": "(floor + fused Adam) / reference", "fast_vs_ref": "fast / reference (min)",
          "n_params": "parameters", "for_loop": "for-loop (s)", "foreach": "foreach (s)", "fused": "fused (s)"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 30000, 100000])
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per process (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="processes per (implementation, size), interleaved")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--families", type=int, nargs="+", default=FAMILY_SIZES, help="genes per family")
    ap.add_argument("--malloc", choices=["default", "as-run", "tuned"], default="default",
                    help="glibc malloc: default / tuned = the same for both sides; as-run = fast with the tuning "
                         "`ghanet train` applies on CPU (env.runtime.tune_malloc), reference without")
    ap.add_argument("--impls", nargs="+", default=["fast", "reference"], choices=["fast", "reference"])
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)   # IMPL "adam": optimisers
    add_record_args(ap)
    args = ap.parse_args(argv)
    if args.worker:
        impl, n = args.worker[0], int(args.worker[1])
        if impl == "adam":
            return emit(adam_worker(max(3, args.repeats), args.threads, args.families))
        if impl == "floor":
            return emit(floor_worker(n, args.repeats, args.threads))
        return emit(worker(impl, n, args.repeats, args.threads, args.families, args.malloc))

    name = "train_step" if args.malloc == "default" else f"train_step_{args.malloc.replace('-', '_')}"
    with Bench(name, "G-HANet training step, inference and peak memory vs the reference implementation",
               args, units=UNITS, labels=LABELS) as bench:
        sized = []
        for n in args.sizes:
            runs = interleave(args.impls, args.rounds, lambda impl, r, n=n: run_worker(impl, n, args), alternate=True)
            floor = run_worker("floor", n, args)["floor_s"] if "reference" in args.impls else []
            sized.append((n, runs, floor))
        adam = run_worker("adam", 0, args)
        for n, runs, floor in sized:
            size_rows(bench, n, runs, floor, min(adam["fused"]), args.impls)
        bench.row(table="adam", n_params=adam["n_params"], **{k.replace("-", "_"): stats(adam[k])
                                                             for k in ("for-loop", "foreach", "fused")})
        env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_"))
        bench.note(f"{args.threads} threads, families {args.families}, malloc {args.malloc}"
                   + (f" (environment: {env})" if env else "") + f"; {args.rounds} interleaved processes x "
                   f"{args.repeats} steps per implementation and size")
        bench.note("the floor: the matrix products every exact fp32 implementation must do per step (two patch "
                   "embeddings forward + weight gradient, the gate forward + both gradients; no attention, no "
                   "element-wise work, no optimiser), timed alone in a process of their own", table="floor")
        bench.note("Adam update of all parameters, same process, interleaved; `ghanet train` uses fused, the "
                   "reference the for-loop default", table="adam")


if __name__ == "__main__":
    main()
