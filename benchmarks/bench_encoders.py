"""Benchmark: per registry encoder, load time and memory, and patches/s of a forward pass (CPU or GPU).

Usage: python -m benchmarks.bench_encoders [uni virchow2 ...] [--batch 2] [--repeats 3] [--device cpu]
       [--weights-file]  (save the random weights to a temp file first and time loading that file)

Each encoder runs in a fresh process (so peak resident memory, read by the harness, is its own): random
weights (``--weights random``) or, with ``--weights-file``, a full-size weights file of the right shape loaded
the way users' files are (meta build + key check). Recorded per encoder: the load time, peak RSS and min /
median seconds per forward of ``--batch`` patches over the repeats. Record: bench ``encoders`` (random
weights) or ``encoders_weights_file``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Bench, WorkerFailed, add_record_args, call_worker, emit, stats

MODULE = "benchmarks.bench_encoders"


def child(name: str, batch: int, repeats: int, device: str, weights_file: bool) -> dict:
    """In the worker process: load the encoder, time ``repeats`` forwards after one warm-up."""
    import torch

    from ghanet_pipeline.features.encoders import get_encoder_spec, load_encoder, preprocess

    spec = get_encoder_spec(name)
    weights = "random:0"
    with tempfile.TemporaryDirectory() as tmp:
        if weights_file:
            full = spec.build()
            weights = str(Path(tmp) / "weights.bin")
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
    return {"name": name, "load_s": load_s, "times": times[1:], "dim": spec.dim, "input": size,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights-file", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    add_record_args(ap)
    args = ap.parse_args(argv)
    if args.child:
        return emit(child(args.child, args.batch, args.repeats, args.device, args.weights_file))
    from ghanet_pipeline.features.encoders import ENCODERS

    names = args.names or list(ENCODERS)
    bench_name = "encoders_weights_file" if args.weights_file else "encoders"
    with Bench(bench_name, f"Encoders: load, peak memory and forward speed (device {args.device}, batch {args.batch}, "
               f"weights {'from a file' if args.weights_file else 'random'})", args,
               units={"params_m": "M", "width": "", "input_px": "px", "load_s": "s", "peak_rss_gib": "GiB",
                      "forward_s": "s", "patches_per_s": "patches/s"},
               labels={"params_m": "params (M)", "load_s": "load (s)", "forward_s": "forward (s)",
                       "patches_per_s": "patches/s (median)"}) as bench:
        for name in names:
            extra = ["--weights-file"] if args.weights_file else []
            try:
                r, proc = call_worker(MODULE, "--child", name, "--batch", str(args.batch), "--repeats", str(args.repeats),
                                      "--device", args.device, *extra)
            except WorkerFailed as e:
                last = str(e).strip().splitlines()[-1]
                print(f"{name}: failed: {last}", file=sys.stderr)
                bench.row(encoder=name, error=last)
                continue
            fwd = stats(r["times"])
            bench.row(encoder=name, params_m=r["params_m"], width=r["dim"], input_px=r["input"], load_s=r["load_s"],
                      peak_rss_gib=proc.peak_rss_gib, forward_s=fwd, patches_per_s=args.batch / fwd.median)
            print(f"{name}: {args.batch / fwd.median:.2f} patches/s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
