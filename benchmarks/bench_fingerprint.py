"""Benchmark: cost of the provenance fingerprint of a training run's bags, and of the resume-state checksum.

Bags: ``--bags`` synthetic bags of ``--rows`` x ``--dim`` float16 features are written twice, once as
``extract-features`` writes them (``features_sha256`` recorded in the attrs) and once without the attr
(bags of older versions / other tools, whose features must be hashed). Each mode runs in a fresh process
(page cache warm after the first round: the figures are hashing and HDF5 costs, not disk reads), rounds
interleaved (recorded, unrecorded / unrecorded, recorded) so that load drift hits both alike; recorded are
the min and median over rounds of the wall time of :func:`ghanet_pipeline.features.fingerprints.bag_content_sha`
over all bags, plus a second pass in the same process (served from the per-process cache).

State checksum: the SHA-256 that :func:`ghanet_pipeline.training.state.save_state` records over the model,
Adam moments and RNG tensors, for G-HANet at ``--model-dim`` (the paper's 512 by default), in its own
process, ``--repeats`` times.

    python -m benchmarks.bench_fingerprint [--bags 1000] [--rows 200] [--dim 1024] [--rounds 3] [--repeats 5]

``--bags 0`` runs only the state part. Record: bench ``fingerprint`` (tables ``main``: bags, ``state``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Bench, add_record_args, call_worker, emit, interleave, stats

MODULE = "benchmarks.bench_fingerprint"


def make_bags(root: Path, n: int, rows: int, dim: int) -> tuple[Path, Path]:
    """``n`` bags written by the library (hash recorded) and the same data without the attr."""
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
    from safetensors.torch import save_file

    from ghanet_pipeline.core.files import fsync_file
    from ghanet_pipeline.models import create_model
    from ghanet_pipeline.training.state import _optimizer_to_flat, _tensors_sha, make_optimizer

    torch.manual_seed(0)
    model = create_model("ghanet", in_dim=1024, n_bins=4, dim=dim, family_sizes=[80, 0, 120, 40, 60, 90])
    opt = make_optimizer(model, 2e-4, 1e-5)
    model(torch.randn(200, 1024))["risk"].sum().backward()
    opt.step()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(_optimizer_to_flat(opt)[0])
    tensors["rng.torch"] = torch.get_rng_state()
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
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


def bags_part(bench: Bench, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folders = dict(zip(("recorded", "plain"), make_bags(Path(tmp), args.bags, args.rows, args.dim), strict=True))
        mib = args.bags * args.rows * args.dim * 2 / 2**20
        bench.note(f"{args.bags} bags of {args.rows} x {args.dim} float16 ({mib:.0f} MiB of features) written in "
                   f"{time.perf_counter() - t0:.1f} s; each mode in a fresh process per round, {args.rounds} rounds "
                   "interleaved")
        rounds = interleave(list(folders), args.rounds, alternate=True,
                            run_one=lambda mode, r: call_worker(MODULE, "--worker", "bags", "--folder", folders[mode])[0])
    assert rounds.results["recorded"][0]["digest"] == rounds.results["plain"][0]["digest"]
    for mode, label in (("recorded", "features_sha256 attr (extract-features bags)"),
                        ("plain", "features hashed (older / foreign bags)")):
        first = rounds.values(mode, lambda x: x["first_s"])
        bench.row(bags=label, seconds=first, ms_per_bag=1e3 * first.min / args.bags,
                  cached_s=rounds.values(mode, lambda x: x["cached_s"]).min)
    plain, rec = (rounds.values(m, lambda x: x["first_s"]) for m in ("plain", "recorded"))
    bench.note(f"hashing / recorded (medians): {plain.median / rec.median:.1f}x")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bags", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model-dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", choices=["bags", "state"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    add_record_args(ap)
    args = ap.parse_args(argv)
    if args.worker == "bags":
        return emit(bag_worker(args.folder))
    if args.worker == "state":
        return emit(state_worker(args.model_dim, args.repeats))
    with Bench("fingerprint", "Provenance fingerprint of a run's bags, and the resume-state checksum", args,
               units={"seconds": "s", "ms_per_bag": "ms", "cached_s": "s", "state_mib": "MiB", "checksum_s": "s",
                      "write_s": "s"},
               labels={"seconds": "all bags (s)", "ms_per_bag": "per bag, min (ms)",
                       "cached_s": "second pass in the same process, min (s)", "state_mib": "model + Adam tensors (MiB)",
                       "checksum_s": "checksum (s)", "write_s": "safetensors write + fsync (s)"}) as bench:
        if args.bags > 0:
            bags_part(bench, args)
        st, _ = call_worker(MODULE, "--worker", "state", "--model-dim", str(args.model_dim), "--repeats", str(args.repeats))
        bench.row(table="state", state=f"G-HANet dim {args.model_dim}", state_mib=st["bytes"] / 2**20,
                  checksum_s=stats(st["times"]), write_s=stats(st["writes"]))


if __name__ == "__main__":
    main()
