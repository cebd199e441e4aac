"""Benchmark: cost of the provenance fingerprint of a training run's bags, and of the resume-state checksum.

Bags: ``--bags`` synthetic bags of ``--rows`` x ``--dim`` float16 features are written twice, once as
``extract-features`` writes them (``features_sha256`` recorded in the attrs) and once without the attr
(bags of older versions / other tools, whose features must be hashed). Each mode runs in a fresh process
(page cache warm after the first round: the figures are hashing and HDF5 costs, not disk reads), rounds
interleaved (recorded, unrecorded / unrecorded, recorded) so that load drift hits both alike; printed are
the min and median over rounds of the wall time of :func:`ghanet_pipeline.features.fingerprints.bag_content_sha`
over all bags, plus a second pass in the same process (served from the per-process cache).

State checksum: the SHA-256 that :func:`ghanet_pipeline.training.state.save_state` records over the model,
Adam moments and RNG tensors, for G-HANet at ``--model-dim`` (the paper's 512 by default), in its own
process, ``--repeats`` times.

    python benchmarks/bench_fingerprint.py [--bags 1000] [--rows 200] [--dim 1024] [--rounds 3] [--repeats 5]

``--bags 0`` runs only the state part.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name, as the library reads it (``ghanet doctor`` prints the same)."""
    from ghanet_pipeline.env.runtime import cpu_info

    return cpu_info().model


def make_bags(root: Path, n: int, rows: int, dim: int) -> tuple[Path, Path]:
    import h5py
    import numpy as np

    from ghanet_pipeline.demo.bags import bag_attrs
    from ghanet_pipeline.features.bags import write_bag

    rec, plain = root / "recorded", root / "plain"
    rec.mkdir(parents=True)
    plain.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sid = f"slide-{i:05d}"
        feats = rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
        coords = np.zeros((rows, 2), np.int64)
        write_bag(rec / f"{sid}.h5", feats, coords, bag_attrs(sid), dtype="float16")
        with h5py.File(plain / f"{sid}.h5", "w") as h5:  # same data, no recorded hash
            h5["features"] = feats
            h5["coords"] = coords
    return rec, plain


def bag_worker(folder: str) -> dict:
    import h5py  # noqa: F401 - imported before timing: the figures are per-bag costs, not import time

    from ghanet_pipeline.features.fingerprints import bag_content_sha

    paths = sorted(Path(folder).glob("*.h5"))
    t0 = time.perf_counter()
    first = [bag_content_sha(p) for p in paths]
    t1 = time.perf_counter()
    second = [bag_content_sha(p) for p in paths]
    t2 = time.perf_counter()
    assert first == second
    return {"first_s": t1 - t0, "cached_s": t2 - t1, "n": len(paths), "digest": first[0]}


def state_worker(dim: int, repeats: int) -> dict:
    import torch

    from ghanet_pipeline.core.files import fsync_file
    from ghanet_pipeline.models import create_model
    from ghanet_pipeline.training.state import _optimizer_to_flat, _tensors_sha, make_optimizer

    torch.manual_seed(0)
    model = create_model("ghanet", in_dim=1024, n_bins=4, dim=dim, family_sizes=[80, 0, 120, 40, 60, 90])
    opt = make_optimizer(model, 2e-4, 1e-5)
    out = model(torch.randn(200, 1024))
    out["risk"].sum().backward()
    opt.step()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(_optimizer_to_flat(opt)[0])
    tensors["rng.torch"] = torch.get_rng_state()
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    from safetensors.torch import save_file

    times, writes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):  # interleaved: checksum, then the write it is part of (safetensors + fsync)
            t0 = time.perf_counter()
            _tensors_sha(tensors)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            save_file({k: v.contiguous() for k, v in tensors.items()}, f"{tmp}/s{i}.safetensors")
            fsync_file(f"{tmp}/s{i}.safetensors")
            writes.append(time.perf_counter() - t0)
    return {"bytes": nbytes, "times": times, "writes": writes}


def run_sub(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bags", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model-dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", choices=["bags", "state"])
    ap.add_argument("--folder")
    args = ap.parse_args()
    if args.worker == "bags":
        print(json.dumps(bag_worker(args.folder)))
        return
    if args.worker == "state":
        print(json.dumps(state_worker(args.model_dim, args.repeats)))
        return

    print(f"CPU: {cpu_model()}; python {platform.python_version()}")
    if args.bags > 0:
        bags_part(args)
    st = run_sub(["--worker", "state", "--model-dim", str(args.model_dim), "--repeats", str(args.repeats)])
    print(f"state checksum (G-HANet dim {args.model_dim}: {st['bytes'] / 2**20:.0f} MiB of model + Adam tensors): "
          f"{min(st['times']):.3f} s min / {statistics.median(st['times']):.3f} s median over {args.repeats}; "
          f"writing the same tensors (safetensors + fsync): {min(st['writes']):.3f} s min / "
          f"{statistics.median(st['writes']):.3f} s median")


def bags_part(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rec, plain = make_bags(Path(tmp), args.bags, args.rows, args.dim)
        mb = args.bags * args.rows * args.dim * 2 / 2**20
        print(f"{args.bags} bags of {args.rows} x {args.dim} float16 ({mb:.0f} MiB of features) written in "
              f"{time.perf_counter() - t0:.1f} s")
        results: dict[str, list[dict]] = {"recorded": [], "plain": []}
        for r in range(args.rounds):
            order = ["recorded", "plain"] if r % 2 == 0 else ["plain", "recorded"]
            for mode in order:
                results[mode].append(run_sub(["--worker", "bags", "--folder", str(rec if mode == "recorded" else plain)]))
        assert results["recorded"][0]["digest"] == results["plain"][0]["digest"]
        for mode, label in (("recorded", "features_sha256 attr (extract-features bags)"),
                            ("plain", "features hashed (older / foreign bags)")):
            first = [x["first_s"] for x in results[mode]]
            cached = [x["cached_s"] for x in results[mode]]
            print(f"  {label}: {min(first):.3f} s min / {statistics.median(first):.3f} s median for "
                  f"{args.bags} bags ({1e3 * min(first) / args.bags:.3f} ms/bag); second pass in the same "
                  f"process {min(cached):.3f} s")
        ratio = statistics.median(x["first_s"] for x in results["plain"]) / statistics.median(
            x["first_s"] for x in results["recorded"])
        print(f"  hashing / recorded (median): {ratio:.1f}x")


if __name__ == "__main__":
    main()
