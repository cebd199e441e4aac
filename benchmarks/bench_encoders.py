"""Benchmark: per registry encoder, load time and memory, and patches/s of a forward pass (CPU or GPU).

Usage: python benchmarks/bench_encoders.py [uni virchow2 ...] [--batch 2] [--repeats 3] [--device cpu]
       [--weights-file]  (save the random weights to a temp file first and time loading that file)

Each encoder runs in a fresh process (so peak resident memory is its own): random weights
(``--weights random``) or, with ``--weights-file``, a full-size weights file of the right shape loaded
the way users' files are (meta build + key check). Prints the CPU model and a markdown table with the
load time, peak RSS and min / median seconds per forward of ``--batch`` patches over the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name, as the library reads it (``ghanet doctor`` prints the same)."""
    from ghanet_pipeline.env.runtime import cpu_info

    return cpu_info().model


def child(name: str, batch: int, repeats: int, device: str, weights_file: bool) -> dict:
    import resource

    import torch

    sys.path.insert(0, str(ROOT))
    from ghanet_pipeline.features.encoders import get_encoder_spec, load_encoder, preprocess

    spec = get_encoder_spec(name)
    weights = "random:0"
    tmp = None
    if weights_file:
        tmp = tempfile.TemporaryDirectory()
        full = spec.build()
        weights = str(Path(tmp.name) / "weights.bin")
        torch.save(full.state_dict(), weights)
        del full
    t0 = time.perf_counter()
    enc = load_encoder(name, weights)
    load_s = time.perf_counter() - t0
    model = enc.model.to(device)
    size = spec.default_input_size or 256
    x = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first pass warms up
            t = time.perf_counter()
            out = model(preprocess(x, spec))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    assert out.shape == (batch, spec.dim)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"name": name, "load_s": load_s, "peak_rss_gb": peak_gb, "times": times[1:], "dim": spec.dim,
            "input": size, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights-file", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.repeats, args.device, args.weights_file)))
        return
    sys.path.insert(0, str(ROOT))
    from ghanet_pipeline.features.encoders import ENCODERS

    names = args.names or list(ENCODERS)
    print(f"CPU: {cpu_model()}; device {args.device}; batch {args.batch}; repeats {args.repeats}; "
          f"weights {'file' if args.weights_file else 'random'}\n")
    print("| encoder | params (M) | width | input px | load s | peak RSS GB | forward s min | median | patches/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, "--batch", str(args.batch), "--repeats", str(args.repeats),
               "--device", args.device] + (["--weights-file"] if args.weights_file else [])
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"| {name} | failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode} |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        lo, med = min(r["times"]), statistics.median(r["times"])
        print(f"| {name} | {r['params_m']:.0f} | {r['dim']} | {r['input']} | {r['load_s']:.1f} | "
              f"{r['peak_rss_gb']:.2f} | {lo:.2f} | {med:.2f} | {args.batch / med:.2f} |", flush=True)


if __name__ == "__main__":
    main()
