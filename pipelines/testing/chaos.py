"""Crash tests: SIGKILL each stage at seeded random moments, rerun it, compare with an uninterrupted run.

For every stage (segment, extract-features, preprocess-genomics, train, predict) on a tiny synthetic
input:

1. a reference run, uninterrupted, timed (``duration``);
2. a control run, uninterrupted, compared with the reference (the stage must be deterministic for
   the comparison to mean anything);
3. ``n`` kill points: start the stage as a subprocess in a fresh output folder, SIGKILL its process
   group at a moment drawn with a seeded generator, kill point i uniformly from the i-th of n equal
   slices of (first write, duration) (first write = when the reference run first created anything under
   its output folder: a kill before it leaves nothing behind, so its rerun is just another plain run;
   duration = the shortest uninterrupted run seen so far: a run that ends before its kill moment lowers
   it), rerun the stage to completion (``train`` with ``--resume``, its documented way; the others by
   plain rerun), and compare the outputs with the reference;
4. two processes started together on the same inputs and output folder; once both have exited, the
   outputs are compared with the reference (a third, plain rerun is made only when one of them
   refused to run, e.g. because the other held a lock, and that is reported).

Outputs are compared file by file (every file under ``<out>`` except ``<out>/logs/``, which holds one
run record per invocation, and hidden lock/temp files, which are counted separately): byte-identical,
or for structured files identical in every dataset / value except the named volatile entries
(:data:`VOLATILE_KEYS`, :data:`VOLATILE_CSV_PREFIXES`).

Usage::

    python pipelines/testing/chaos.py --n 50                 # every stage, 50 kill points each
    python pipelines/testing/chaos.py --n 5 --stages predict segment --json chaos.json

The same functions run in the test suite with a small ``n`` (``tests/e2e/test_chaos.py``, marker ``chaos``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

#: JSON keys / HDF5 attrs whose values are timings, dates, hosts or process ids (ignored when comparing)
VOLATILE_KEYS = frozenset({"seconds", "finished", "started", "created", "created_at", "timestamp", "date",
                           "hostname", "host", "pid", "elapsed", "duration_s", "wall_s", "patches_per_s",
                           "seconds_per_epoch", "epoch_seconds", "time_s"})
#: CSV columns (by prefix) holding timings
VOLATILE_CSV_PREFIXES = ("seconds",)

STAGES = ("segment", "extract-features", "preprocess-genomics", "train", "predict")


# ----------------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """The tiny synthetic inputs every stage runs on (made once per work folder).

    The outputs a stage starts from are the reference (uninterrupted) runs of the stages before it,
    made on first use: extract-features starts from segment's, train from preprocess-genomics', predict
    from train's.
    """

    root: Path
    slides: Path      # 3 small synthetic slides
    cohort: Path      # genomics table + families CSV
    bags: Path        # synthetic feature bags of the cohort (train, predict)

    @property
    def segment(self) -> Path:
        return reference(self, "segment")[0] / "segment"

    @property
    def genomics(self) -> Path:
        return reference(self, "preprocess-genomics")[0] / "genomics"

    @property
    def model(self) -> Path:
        return reference(self, "train")[0] / "train" / "ghanet"


def ghanet(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ghanet_pipeline", *map(str, args)]


def env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    e.pop("GHANET_MODEL", None)
    return e


def prepare_inputs(root: Path) -> Inputs:
    """Write the slides, cohort tables and bags (once per ``root``)."""
    from ghanet_pipeline.demo.bags import write_synthetic_bags
    from ghanet_pipeline.demo.cohort import make_cohort, write_cohort_tables
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    root.mkdir(parents=True, exist_ok=True)
    inp = Inputs(root=root, slides=root / "slides", cohort=root / "cohort", bags=root / "bags")
    if (root / "ready").exists():
        return inp
    inp.slides.mkdir(exist_ok=True)
    for i in range(3):
        write_synthetic_slide(inp.slides / f"slide{i}.svs", 1280, 1024, mpp=0.5, phenotype=0.2 + 0.3 * i, seed=i)
    cohort = make_cohort(n_cases=12, seed=0)
    write_cohort_tables(cohort, inp.cohort, table_name="table.csv")
    write_synthetic_bags(cohort, inp.bags, n_patches=(20, 40), dim=32, seed=0)
    (root / "ready").write_text("ok\n")
    return inp


def reference(inp: Inputs, stage: str) -> tuple[Path, float, float]:
    """(output folder, seconds, first write) of the stage's uninterrupted reference run, made on first use.

    first write: seconds from the start until anything new (a file, folder, lock or temporary file) first
    appeared under the output folder."""
    out = inp.root / "refs" / stage
    done = out.parent / f"{stage}.json"
    if not done.exists():
        setup_out(stage, out, inp)
        rc, seconds, first, text = run_watched(command(stage, out, inp, rerun=False), out)
        if rc != 0:
            raise RuntimeError(f"{stage}: the reference run failed (exit {rc}):\n{text}")
        done.write_text(json.dumps({"seconds": seconds, "first_write_s": first}) + "\n")
    timing = json.loads(done.read_text())
    return out, float(timing["seconds"]), float(timing["first_write_s"])


def command(stage: str, out: Path, inp: Inputs, rerun: bool) -> list[str]:
    """The command line of ``stage`` writing into ``out`` (``rerun``: the documented way to continue)."""
    common = ["--out", out, "--no-progress"]
    if stage == "segment":
        return ghanet("segment", inp.slides, *common)
    if stage == "extract-features":
        return ghanet("extract-features", inp.slides, *common, "--weights", "random", "--resize", "32",
                      "--device", "cpu", "--batch-size", "4", "--num-workers", "0", "--threads", "1")
    if stage == "preprocess-genomics":
        return ghanet("preprocess-genomics", "--table", inp.cohort / "table.csv", "--families",
                      inp.cohort / "families.csv", "--folds", "2", "--de-method", "ttest", "--out", out)
    if stage == "train":
        return ghanet("train", "--features", inp.bags, "--genomics", inp.genomics, *common, "--epochs", "3",
                      "--folds", "0",
                      "--dim", "16", "--accum", "4", "--device", "cpu", "--threads", "1",
                      *(["--resume"] if rerun else []))
    if stage == "predict":
        return ghanet("predict", "--features", inp.bags, "--model", inp.model, *common, "--device", "cpu")
    raise ValueError(stage)


def setup_out(stage: str, out: Path, inp: Inputs) -> None:
    """A fresh output folder holding what the stage starts from (earlier stages' outputs)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if stage == "extract-features":
        shutil.copytree(inp.segment, out / "segment")


def compared_root(stage: str, out: Path) -> Path:
    """The part of ``out`` a stage writes (earlier stages' copied outputs are not compared)."""
    return {"segment": out / "segment", "extract-features": out / "features", "preprocess-genomics": out / "genomics",
            "train": out / "train", "predict": out / "predict"}[stage]


# ----------------------------------------------------------------------------------------- comparing


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: v for k, v in row.items() if not k.startswith(VOLATILE_CSV_PREFIXES)} for row in csv.DictReader(fh)]


def _h5_content(path: Path) -> dict[str, Any]:
    import h5py
    import numpy as np

    out: dict[str, Any] = {}

    def attrs(obj: Any) -> dict[str, Any]:
        d = {}
        for k, v in obj.attrs.items():
            if k in VOLATILE_KEYS:
                continue
            if isinstance(v, (str, bytes)):
                try:
                    v = _strip(json.loads(v))
                except (ValueError, TypeError):
                    pass
            d[k] = v.tolist() if isinstance(v, np.ndarray) else v
        return d

    with h5py.File(path, "r") as h5:
        out["/"] = attrs(h5)

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = (str(obj.dtype), obj.shape, obj[()].tobytes(), attrs(obj))
            else:
                out[name] = attrs(obj)

        h5.visititems(visit)
    return out


def same_file(a: Path, b: Path) -> str:
    """"" when ``a`` and ``b`` hold the same content (volatile entries aside), else what differs."""
    if a.read_bytes() == b.read_bytes():
        return ""
    suffix = "".join(a.suffixes[-2:]) if a.name.endswith(".coords.h5") else a.suffix
    try:
        if suffix in (".json", ".geojson"):
            same = _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text()))
        elif suffix == ".csv":
            same = _csv_rows(a) == _csv_rows(b)
        elif suffix in (".h5", ".coords.h5"):
            ca, cb = _h5_content(a), _h5_content(b)
            if ca != cb:
                keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
                return f"{a.name}: differs in {keys[:5]}"
            same = True
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            ta, tb = load_file(str(a)), load_file(str(b))
            same = ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta)
        else:
            same = False
    except (OSError, ValueError, RuntimeError) as exc:
        return f"{a.name}: unreadable ({type(exc).__name__}: {exc})"
    return "" if same else f"{a.name}: content differs"


def compare_trees(ref: Path, got: Path) -> tuple[list[str], list[str]]:
    """(differences, leftover hidden files) between two output folders; hidden files are not outputs."""
    def files(root: Path) -> dict[str, Path]:
        if not root.exists():
            return {}
        return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}

    fr, fg = files(ref), files(got)
    hidden = sorted(k for k in fg if any(part.startswith(".") for part in Path(k).parts))
    fr = {k: v for k, v in fr.items() if not any(part.startswith(".") for part in Path(k).parts)}
    fg = {k: v for k, v in fg.items() if k not in hidden}
    diffs = [f"missing {k}" for k in sorted(set(fr) - set(fg))] + [f"extra {k}" for k in sorted(set(fg) - set(fr))]
    for k in sorted(set(fr) & set(fg)):
        d = same_file(fr[k], fg[k])
        if d:
            diffs.append(f"{k}: {d}")
    return diffs, [h for h in hidden if not h.endswith(".lock")]


# ----------------------------------------------------------------------------------------- running


def run(cmd: list[str], timeout: float = 900) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    return res.returncode, time.perf_counter() - t0, (res.stdout + res.stderr)[-4000:]


def _paths(root: Path) -> set[str]:
    found = set()
    for d, dirs, files in os.walk(root):
        found.update(os.path.join(d, n) for n in (*dirs, *files))
    return found


def run_watched(cmd: list[str], out: Path, timeout: float = 900, poll_s: float = 0.005
                ) -> tuple[int, float, float, str]:
    """Run ``cmd`` to completion: (exit code, seconds, first write, output tail); first write = seconds until
    a path not there at the start first appeared under ``out`` (polled every ``poll_s``; the whole run
    when none did)."""
    import tempfile

    before = _paths(out)
    first: float | None = None
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            now = time.perf_counter() - t0
            if now > timeout:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(cmd, timeout)
            if first is None and _paths(out) - before:
                first = now
            time.sleep(poll_s)
        seconds = time.perf_counter() - t0
        log.seek(0)
        text = log.read()[-4000:]
    return proc.returncode, seconds, seconds if first is None else first, text


def run_and_kill(cmd: list[str], after_s: float) -> tuple[bool, float]:
    """Start ``cmd`` in its own process group, SIGKILL the group after ``after_s``. Returns (killed,
    seconds): killed is False when it had already finished (seconds = its whole run)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=after_s)
        return False, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True, after_s


@dataclass
class KillPoint:
    at_s: float
    killed: bool
    rerun_rc: int
    diffs: list[str]
    leftovers: list[str]

    @property
    def identical(self) -> bool:
        return self.rerun_rc == 0 and not self.diffs


@dataclass
class StageReport:
    stage: str
    duration_s: float
    first_write_s: float
    control_identical: bool
    control_diffs: list[str]
    points: list[KillPoint] = field(default_factory=list)
    concurrent_rcs: list[int] = field(default_factory=list)
    concurrent_needed_rerun: bool = False
    concurrent_diffs: list[str] = field(default_factory=list)

    @property
    def n_killed(self) -> int:
        return sum(p.killed for p in self.points)

    @property
    def n_identical(self) -> int:
        return sum(p.identical for p in self.points)

    def summary(self) -> dict[str, Any]:
        return {"stage": self.stage, "duration_s": round(self.duration_s, 2),
                "first_write_s": round(self.first_write_s, 2), "kill_points": len(self.points),
                "killed_before_end": self.n_killed, "identical_after_rerun": self.n_identical,
                "control_identical": self.control_identical, "concurrent_rcs": self.concurrent_rcs,
                "concurrent_needed_rerun": self.concurrent_needed_rerun,
                "concurrent_identical": not self.concurrent_diffs,
                "leftover_hidden_files": sum(len(p.leftovers) for p in self.points)}


def chaos_stage(stage: str, inp: Inputs, n: int, seed: int, work: Path, concurrent: bool = True,
                control: bool = True, log: Callable[[str], None] = print) -> StageReport:
    """Reference run, (optionally) a control run, ``n`` kill points and (optionally) the concurrent pair.

    Kill point i (0-based) falls in the i-th of ``n`` equal slices of (first write, duration): every part of
    the stage's writing is hit, none is spent before the stage has written anything."""
    ref, duration, first_write = reference(inp, stage)
    diffs: list[str] = []
    if control:
        ctl = work / f"{stage}-ctl"
        setup_out(stage, ctl, inp)
        rc, seconds, first, text = run_watched(command(stage, ctl, inp, rerun=False), ctl)
        diffs, _ = compare_trees(compared_root(stage, ref), compared_root(stage, ctl))
        diffs = diffs if rc == 0 else [f"control run exit {rc}", *diffs]
        shutil.rmtree(ctl)
        if rc == 0:  # kill points from one run's own timings, under the machine's load now
            duration, first_write = seconds, first
    report = StageReport(stage, duration, first_write, control_identical=not diffs, control_diffs=diffs[:10])
    log(f"{stage}: uninterrupted run {duration:.1f} s, first write after {first_write:.2f} s"
        + (f"; control run identical: {report.control_identical} {diffs[:3]}" if control else ""))
    rng = random.Random(f"{seed}-{stage}")
    out = work / f"{stage}-kill"
    for i in range(n):
        lo = min(first_write, 0.8 * duration)  # timings of different runs under changing load may cross
        at = lo + (i + rng.random()) / n * (duration - lo)
        setup_out(stage, out, inp)
        killed, took = run_and_kill(command(stage, out, inp, rerun=False), at)
        if not killed:  # the run is faster now than when it was timed (machine load): draw from less
            duration = min(duration, took)
        rc, _, text = run(command(stage, out, inp, rerun=True))
        diffs, leftovers = compare_trees(compared_root(stage, ref), compared_root(stage, out))
        point = KillPoint(round(at, 3), killed, rc, diffs[:10], leftovers)
        report.points.append(point)
        if leftovers:
            log(f"    leftover hidden files: {leftovers[:5]}")
        log(f"  kill {i + 1}/{n} at {at:.2f} s ({'killed' if killed else 'had finished'}): "
            + ("identical" if point.identical else f"rerun exit {rc}, {diffs[:3]} {text[-500:] if rc else ''}"))
    report.duration_s = duration
    if concurrent:
        setup_out(stage, out, inp)
        procs = [subprocess.Popen(command(stage, out, inp, rerun=False), env=env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        texts = [p.communicate(timeout=900)[0] for p in procs]
        report.concurrent_rcs = [p.returncode for p in procs]
        if any(report.concurrent_rcs):
            report.concurrent_needed_rerun = True
            rc, _, _ = run(command(stage, out, inp, rerun=True))
        diffs, _ = compare_trees(compared_root(stage, ref), compared_root(stage, out))
        report.concurrent_diffs = diffs[:10]
        log(f"  two processes at once: exit codes {report.concurrent_rcs}, outputs "
            + ("identical" if not diffs else f"differ: {diffs[:3]}")
            + (f" (after a rerun; {[t[-300:] for t in texts]})" if report.concurrent_needed_rerun else ""))
    shutil.rmtree(out, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50, help="kill points per stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the per-stage results here")
    ap.add_argument("--no-concurrent", action="store_true")
    args = ap.parse_args(argv)
    import tempfile

    from ghanet_pipeline.env.runtime import cpu_info

    cpu_model = cpu_info().model
    work = args.work or Path(tempfile.mkdtemp(prefix="ghanet-chaos-"))
    print(f"CPU: {cpu_model} ({os.cpu_count()} cores); python {platform.python_version()}; work folder {work}")
    t0 = time.perf_counter()
    inp = prepare_inputs(work / "inputs")
    print(f"inputs ready in {time.perf_counter() - t0:.1f} s")
    reports = []
    for stage in args.stages:
        rep = chaos_stage(stage, inp, args.n, args.seed, work, concurrent=not args.no_concurrent)
        reports.append(rep)
        if args.json:
            args.json.write_text(json.dumps({"cpu": cpu_model, "n": args.n, "seed": args.seed,
                                             "stages": [r.summary() for r in reports],
                                             "details": [asdict(r) for r in reports]}, indent=2))
    print("\nstage                 run s  1st write s  kill points  killed  identical  control  concurrent (exit codes)")
    for r in reports:
        s = r.summary()
        print(f"{r.stage:20s} {s['duration_s']:6.1f}  {s['first_write_s']:11.2f}  {s['kill_points']:11d}  "
              f"{s['killed_before_end']:6d}  "
              f"{s['identical_after_rerun']:9d}  {str(s['control_identical']):7s}  "
              f"{'identical' if s['concurrent_identical'] else 'DIFFER'} {s['concurrent_rcs']}"
              + (" (+rerun)" if s["concurrent_needed_rerun"] else ""))
    print(f"total {time.perf_counter() - t0:.0f} s")
    ok = all(r.control_identical and r.n_identical == len(r.points) and not r.concurrent_diffs for r in reports)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
