"""Benchmark: G-HANet training step and inference time, peak memory, for bags of 1k / 10k / 100k patches.

One training step = forward + loss (NLL + 0.3 * (MSE + SCE) over the families) + backward + Adam step,
one case, as in training. Each (implementation, size) runs in its own subprocess so that peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that configuration alone.

Implementations: ``fast`` = :class:`ghanet_pipeline.models.GHANet` (what ``ghanet train`` uses);
``reference`` = :func:`ghanet_pipeline.models.reference.reference_forward` (``plain_dropout=True``) on
the same parameters, written like the authors' released code: keys/values projected for every patch in
both cross-attention passes, ReLU then ``F.dropout`` on the patch embeddings, dense masked softmax — the baseline, measured in the same run.

    .venv/bin/python benchmarks/bench_train_step.py [--sizes 1000 10000 100000] [--repeats 3] [--threads 2]
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
AUTHORS_REFERENCE = {1000: 0.17, 10000: 1.13, 100000: 13.9}   # s/step, authors' code, 2 threads (issue 7)
AUTHORS_RSS_100K_GB = 4.9


def worker(impl: str, n: int, repeats: int, threads: int) -> dict:
    import resource

    import torch
    import torch.nn.functional as F

    from ghanet_pipeline.models import create_model
    from ghanet_pipeline.models.reference import reference_forward
    from ghanet_pipeline.models.survival import nll_loss, sce_loss
    from ghanet_pipeline.training.state import make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("ghanet", in_dim=1024, family_sizes=FAMILY_SIZES)
    forward = model if impl == "fast" else (lambda x: reference_forward(model, x, plain_dropout=True))
    # fast = what `ghanet train` uses (fused Adam); reference = the authors' plain Adam
    opt = (make_optimizer(model, 2e-4, 1e-5) if impl == "fast"
           else torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5))
    features = torch.randn(n, 1024)
    targets = [torch.randn(k) for k in FAMILY_SIZES]

    def step() -> float:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        model.train()
        out = forward(features)
        loss = nll_loss(out["hazards"], out["S"], 2, 0)
        recon = sum(F.mse_loss(p, t) + sce_loss(p, t) for p, t in zip(out["recon"], targets, strict=False) if p is not None)
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

    cpu_s: list[float] = []
    step()  # warm-up (allocator, Adam state)
    train_s = [step() for _ in range(repeats)]
    cpu_s = cpu_s[1:]
    infer()
    infer_s = [infer() for _ in range(repeats)]
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"impl": impl, "n": n, "train_s": train_s, "train_cpu_s": cpu_s, "infer_s": infer_s, "peak_rss_gb": rss_kb / 1024 ** 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--impls", nargs="+", default=["fast", "reference"], choices=["fast", "reference"])
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.threads)))
        return

    root = Path(__file__).resolve().parents[1]
    results: dict[tuple[str, int], dict] = {}
    for n in args.sizes:
        for impl in args.impls:
            proc = subprocess.run([sys.executable, __file__, "--worker", impl, str(n), "--repeats",
                                   str(args.repeats), "--threads", str(args.threads)],
                                  cwd=root, capture_output=True, text=True, check=True)
            results[impl, n] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"done {impl} N={n}", file=sys.stderr)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nG-HANet, CPU, {args.threads} threads, families {FAMILY_SIZES}, {args.repeats} repeats "
          f"(min / median seconds; load average at the end {load})\n")
    print("| patches | impl | train step s (min / med) | train step CPU s (min) | inference s (min / med) | "
          "peak RSS GB | step vs authors' ref |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        for impl in args.impls:
            r = results[impl, n]
            tmin, tmed = min(r["train_s"]), statistics.median(r["train_s"])
            imin, imed = min(r["infer_s"]), statistics.median(r["infer_s"])
            ref = AUTHORS_REFERENCE.get(n)
            ratio = f"{tmin / ref:.2f}x" if ref else "-"
            print(f"| {n:,} | {impl} | {tmin:.3f} / {tmed:.3f} | {min(r['train_cpu_s']):.3f} | "
                  f"{imin:.3f} / {imed:.3f} | "
                  f"{r['peak_rss_gb']:.2f} | {ratio} |")
    if all(i in args.impls for i in ("fast", "reference")):
        print("\n| patches | fast / reference train step (min) | fast / reference peak RSS |")
        print("|---:|---:|---:|")
        for n in args.sizes:
            f, r = results["fast", n], results["reference", n]
            print(f"| {n:,} | {min(f['train_s']) / min(r['train_s']):.2f} | "
                  f"{f['peak_rss_gb'] / r['peak_rss_gb']:.2f} |")
    print(f"\nAuthors' implementation on this machine (issue 7): {AUTHORS_REFERENCE} s/step, "
          f"peak RSS {AUTHORS_RSS_100K_GB} GB at 100k.")


if __name__ == "__main__":
    main()
