"""Benchmark: G-HANet training step, inference time and peak memory vs the reference implementation.

One training step = forward + loss (NLL + 0.3 * (MSE + SCE) over the families) + backward + Adam step,
one case, as in training. Implementations, on the same parameters (same seed):

- ``fast``: :class:`ghanet_pipeline.models.GHANet` with the optimiser of ``ghanet train``
  (:func:`ghanet_pipeline.training.state.make_optimizer`);
- ``reference``: :func:`ghanet_pipeline.models.reference.reference_forward` (``plain_dropout=True``),
  written like the authors' released code (keys/values projected for every patch in both
  cross-attention passes, ReLU then ``F.dropout``, dense masked softmax) with plain ``torch.optim.Adam``.

Every ratio printed is measured in this run: each (implementation, size) runs in its own subprocess
(so that its peak RSS, ``ru_maxrss``, belongs to it alone), and the processes are interleaved
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

    python benchmarks/bench_train_step.py [--sizes 1000 10000 30000 100000] [--repeats 2] [--rounds 2]
                                           [--threads 2] [--families 80 0 120 40 60 90] [--malloc default]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

FAMILY_SIZES = [80, 0, 120, 40, 60, 90]   # one empty family, like a fold where DE kept no gene


def cpu_model() -> str:
    """The CPU model name, as the library reads it (``ghanet doctor`` prints the same)."""
    from ghanet_pipeline.env.runtime import cpu_info

    return cpu_info().model


def worker(impl: str, n: int, repeats: int, threads: int, families: list[int], malloc: str) -> dict:
    import resource

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
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"impl": impl, "n": n, "first_s": first_s, "train_s": train_s, "train_cpu_s": cpu_s[1:],
            "infer_s": infer_s, "peak_rss_gb": rss_kb / 1024 ** 2}


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
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, __file__, "--worker", impl, str(n), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--malloc", args.malloc, "--families", *map(str, args.families)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"worker {impl} N={n} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
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
    args = ap.parse_args()
    if args.worker:
        if args.worker[0] == "adam":
            print(json.dumps(adam_worker(max(3, args.repeats), args.threads, args.families)))
        elif args.worker[0] == "floor":
            print(json.dumps(floor_worker(int(args.worker[1]), args.repeats, args.threads)))
        else:
            print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.threads, args.families,
                                    args.malloc)))
        return

    import torch

    load0 = os.getloadavg()
    t_start = time.time()
    runs: dict[tuple[str, int], list[dict]] = {}
    floors: dict[int, list[float]] = {}
    for n in args.sizes:
        for r in range(args.rounds):
            order = args.impls if r % 2 == 0 else args.impls[::-1]
            for impl in order:
                res = run_worker(impl, n, args)
                runs.setdefault((impl, n), []).append(res)
                print(f"done {impl} N={n} round {r + 1}: step {min(res['train_s']):.3f} s, "
                      f"peak RSS {res['peak_rss_gb']:.2f} GB, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
        floors[n] = run_worker("floor", n, args)["floor_s"]
    adam = run_worker("adam", 0, args)
    load1 = os.getloadavg()

    malloc_env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_"))
    malloc_env = f" (environment: {malloc_env})" if malloc_env else ""

    def agg(impl: str, n: int, key: str) -> list[float]:
        return [x for run in runs[impl, n] for x in run[key]]

    print(f"\nG-HANet training step, {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
          f"{args.threads} threads, families {args.families}, malloc {args.malloc}{malloc_env}; "
          f"{args.rounds} interleaved processes x "
          f"{args.repeats} steps per implementation and size; {time.time() - t_start:.0f} s; "
          f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end\n")
    print("| patches | impl | train step s (min / median) | train step CPU s (min) | first step s | "
          "inference s (min / median) | peak RSS GB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        for impl in args.impls:
            tr, inf = agg(impl, n, "train_s"), agg(impl, n, "infer_s")
            first = max(run["first_s"] for run in runs[impl, n])
            rss = max(run["peak_rss_gb"] for run in runs[impl, n])
            print(f"| {n:,} | {impl} | {min(tr):.3f} / {statistics.median(tr):.3f} | "
                  f"{min(agg(impl, n, 'train_cpu_s')):.3f} | {first:.2f} | "
                  f"{min(inf):.3f} / {statistics.median(inf):.3f} | {rss:.2f} |")
    if all(i in args.impls for i in ("fast", "reference")):
        print("\nfast / reference, same run (per-round ratios of the per-process minimum in brackets):\n")
        print("| patches | train step (min) | train step (median) | train step CPU (min) | inference (min) | "
              "peak RSS |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n in args.sizes:
            f_tr, r_tr = agg("fast", n, "train_s"), agg("reference", n, "train_s")
            per_round = ", ".join(f"{min(f['train_s']) / min(r['train_s']):.2f}"
                                  for f, r in zip(runs["fast", n], runs["reference", n], strict=True))
            rss = (max(run["peak_rss_gb"] for run in runs["fast", n])
                   / max(run["peak_rss_gb"] for run in runs["reference", n]))
            print(f"| {n:,} | {min(f_tr) / min(r_tr):.2f} ({per_round}) | "
                  f"{statistics.median(f_tr) / statistics.median(r_tr):.2f} | "
                  f"{min(agg('fast', n, 'train_cpu_s')) / min(agg('reference', n, 'train_cpu_s')):.2f} | "
                  f"{min(agg('fast', n, 'infer_s')) / min(agg('reference', n, 'infer_s')):.2f} | {rss:.2f} |")

    if "reference" in args.impls:
        print("\nThe floor: the matrix products every exact fp32 implementation must do per step (two patch "
              "embeddings forward + weight gradient, the gate forward + both gradients; no attention, no "
              "element-wise work, no optimiser), timed alone in a process of their own after the runs above:\n")
        print("| patches | required products s (min) | floor / reference (min) | (floor + fused Adam) / reference "
              "| fast / reference (min) |")
        print("|---:|---:|---:|---:|---:|")
        for n in args.sizes:
            ref = min(agg("reference", n, "train_s"))
            fast = f"{min(agg('fast', n, 'train_s')) / ref:.2f}" if "fast" in args.impls else ""
            print(f"| {n:,} | {min(floors[n]):.3f} | {min(floors[n]) / ref:.2f} | "
                  f"{(min(floors[n]) + min(adam['fused'])) / ref:.2f} | {fast} |")

    print(f"\nAdam update of the {adam['n_params'] / 1e6:.1f}M parameters (s, min / median; same process, "
          f"interleaved; `ghanet train` uses fused, the reference above the for-loop default):\n")
    print("| for-loop | foreach | fused |\n|---:|---:|---:|")
    print("| " + " | ".join(f"{min(adam[k]):.3f} / {statistics.median(adam[k]):.3f}"
                            for k in ("for-loop", "foreach", "fused")) + " |")


if __name__ == "__main__":
    main()
