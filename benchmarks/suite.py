"""The benchmark suite: every benchmark with the options of the figures in docs/benchmarks.md (``make bench``),
or each at its smallest size (``--smoke``: checks that it runs and writes a valid record; not results).

    python -m benchmarks.suite [--list] [--smoke] [--only NAME ...] [--skip NAME ...] [--real-slide SVS]
                               [--demo-out DIR] [--results DIR]

Each entry runs as its own process from the repository root, one after another, without the caller's
``MALLOC_*`` variables (each benchmark sets glibc malloc itself, see its ``--malloc`` / ``--malloc-compare``);
entries whose needs are missing (a demo run for ``compare_models``, ``compare_precisions``,
``train_precision``, ``seed_control``, an AVX512-BF16 CPU for the instruction-set runs) are skipped with the reason. Exit 1 if
an entry failed or (``--smoke``) did not write the record it should.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import ROOT, load_average, read_records


@dataclass(frozen=True)
class Entry:
    """One command of the suite: ``python -m benchmarks.<module> <args>``, writing a record of bench ``bench``."""

    bench: str
    module: str
    args: tuple[str, ...]
    smoke: tuple[str, ...]
    #: (context) -> reason it cannot run here, or None
    needs: Callable[[argparse.Namespace], str | None] = field(default=lambda ctx: None)

    def argv(self, ctx: argparse.Namespace) -> list[str]:
        args = list(self.smoke if ctx.smoke else self.args)
        if ctx.real_slide and self.bench in ("segment", "extract_reader"):
            args += ["--real-slide", str(ctx.real_slide)]
        if self.bench == "int8_fidelity":
            args += ["--slide", str(ctx.real_slide)]
        if self.bench == "rehearsal":
            args += rehearsal_inputs(ctx)
        if self.bench in DEMO_BENCHES:
            args += ["--demo-out", str(ctx.demo_out)]
        if self.module.endswith(".sh"):
            return ["bash", self.module, *args]
        return [sys.executable, "-m", self.module, *args]


def _has_bf16_avx512(ctx: argparse.Namespace) -> str | None:
    from ghanet_pipeline.env.runtime import cpu_info

    return None if cpu_info().avx512_bf16 else "the CPU has no AVX512-BF16 (the run limits oneDNN below it)"


def _has_real_slide(ctx: argparse.Namespace) -> str | None:
    return None if ctx.real_slide else "no real slide given (--real-slide SVS, e.g. CMU-1-Small-Region.svs)"


def _mcat_files(ctx: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None]:
    """The MCAT table (``*_all_clean.csv.zip``), ``signatures.csv`` and splits folder (``splits_*``) in --mcat."""
    if ctx.mcat is None or not Path(ctx.mcat).is_dir():
        return None, None, None
    folder = Path(ctx.mcat)
    table = next(iter(sorted(folder.glob("*_all_clean.csv*"))), None)
    splits = next(iter(sorted(p for p in folder.glob("splits_*") if p.is_dir())), None)
    return table, (folder / "signatures.csv" if (folder / "signatures.csv").is_file() else None), splits


def _has_mcat(ctx: argparse.Namespace) -> str | None:
    table, families, _ = _mcat_files(ctx)
    return None if table and families else "no MCAT table (--mcat DIR: *_all_clean.csv.zip and signatures.csv)"


def rehearsal_inputs(ctx: argparse.Namespace) -> list[str]:
    """``--table``, ``--families`` (and, full size, ``--splits``) from --mcat, and the work folder."""
    table, families, splits = _mcat_files(ctx)
    args = ["--table", str(table), "--families", str(families)]
    if splits is not None and not ctx.smoke:
        args += ["--splits", str(splits)]
    work = Path(tempfile.gettempdir()) / ("ghanet-rehearsal-smoke" if ctx.smoke else "ghanet-rehearsal")
    return [*args, "--work", str(work)]


def _has_demo(ctx: argparse.Namespace) -> str | None:
    ok = (Path(ctx.demo_out) / "demo-data" / "genomics_table.csv").is_file()
    return None if ok else f"no demo run under {ctx.demo_out} (`make demo` first, or --demo-out DIR)"


P = "benchmarks."
#: the encoder engines compared whole-process (bf16 rows: emulated, and slow, on CPUs without bf16 instructions)
ENGINE_SYSTEMS = "bare-fp32,ghanet-fp32,ghanet-ovfp32,ghanet-int8,bare-bf16,ghanet-bf16,ghanet-ovbf16"
#: entries that read a finished demo run (the suite's --demo-out)
DEMO_BENCHES = ("compare_models", "compare_precisions", "train_precision", "seed_control")
SUITE: tuple[Entry, ...] = (
    Entry("genomics", P + "bench_genomics", (), ("--quick",)),
    Entry("segment", P + "bench_segment", ("--size", "40000", "--repeats", "3"), ("--size", "2048", "--repeats", "1")),
    Entry("extract_process", P + "bench_extract_process", ("--patches", "948", "--repeats", "3"),
          ("--patches", "16", "--repeats", "1", "--systems", "bare-fp32,ghanet-fp32,clam-256")),
    Entry("extract_engines", P + "bench_extract_process",
          ("--patches", "948", "--repeats", "3", "--systems", ENGINE_SYSTEMS),
          ("--patches", "16", "--repeats", "1", "--systems", "bare-fp32,ghanet-ovfp32")),
    Entry("extract_reader", P + "bench_extract_process", ("--reader", "--patches", "948", "--repeats", "3"),
          ("--reader", "--patches", "16", "--repeats", "1")),
    Entry("extract", P + "bench_extract", ("--patches", "64", "--repeats", "3"),
          ("--patches", "8", "--repeats", "1", "--batch-size", "8", "--precisions", "fp32")),
    Entry("extract_malloc", P + "bench_extract",
          ("--malloc-compare", "--patches", "32", "--precisions", "fp32", "--rounds", "3", "--repeats", "3"),
          ("--malloc-compare", "--patches", "8", "--batch-size", "8", "--precisions", "fp32", "--rounds", "1",
           "--repeats", "1")),
    Entry("extract_isa_avx512_core_bf16", P + "bench_extract_process",
          ("--isa", "AVX512_CORE_BF16", "--patches", "192", "--repeats", "3", "--systems",
           "bare-fp32,bare-bf16,ghanet-fp32,ghanet-bf16"),
          ("--isa", "AVX512_CORE_BF16", "--patches", "16", "--repeats", "1", "--systems", "bare-fp32,bare-bf16"),
          _has_bf16_avx512),
    Entry("extract_isa_avx2", P + "bench_extract_process",
          ("--isa", "AVX2", "--patches", "64", "--repeats", "3", "--systems", "bare-fp32,bare-bf16"),
          ("--isa", "AVX2", "--patches", "16", "--repeats", "1", "--systems", "bare-fp32,bare-bf16"), _has_bf16_avx512),
    Entry("train_step", P + "bench_train_step",
          ("--sizes", "1000", "10000", "30000", "100000", "--rounds", "3", "--repeats", "3", "--threads", "2"),
          ("--sizes", "100", "--rounds", "1", "--repeats", "1", "--threads", "1")),
    Entry("train_step_as_run", P + "bench_train_step",
          ("--malloc", "as-run", "--sizes", "1000", "10000", "30000", "--rounds", "3", "--repeats", "3", "--threads", "2"),
          ("--malloc", "as-run", "--sizes", "100", "--rounds", "1", "--repeats", "1", "--threads", "1")),
    Entry("fingerprint", P + "bench_fingerprint", ("--bags", "1000", "--rows", "200", "--rounds", "3", "--repeats", "5"),
          ("--bags", "4", "--rows", "10", "--dim", "16", "--rounds", "1", "--model-dim", "64", "--repeats", "1")),
    Entry("predict", P + "bench_predict", ("--repeats", "2", "--width", "6144", "--height", "4096", "--threads", "2"),
          ("--repeats", "1", "--width", "1536", "--height", "1536", "--threads", "1")),
    Entry("encoders", P + "bench_encoders", ("--batch", "2", "--repeats", "3"),
          ("resnet50_trunc", "--batch", "1", "--repeats", "1")),
    Entry("predict_engines", P + "bench_predict_engines", ("--patches", "10000", "--repeats", "2", "--threads", "2"),
          ("--patches", "16", "--repeats", "1", "--threads", "1", "--cache",
           str(Path(tempfile.gettempdir()) / "ghanet-bench-predict-engines-smoke"))),
    Entry("int8_fidelity", P + "bench_int8_fidelity", (),
          ("--recipes", "plain", "--dense", "16", "--threads", "1", "--work",
           str(Path(tempfile.gettempdir()) / "ghanet-bench-int8-fidelity-smoke")), _has_real_slide),
    Entry("compare_models", P + "compare_models", ("--splits", "3", "--seeds", "1", "--control-model", "abmil"),
          ("--splits", "1", "--seeds", "1", "--folds", "2", "--epochs", "1", "--control-model", "abmil",
           "--work", str(Path(tempfile.gettempdir()) / "ghanet-compare-smoke")), _has_demo),
    Entry("compare_precisions", P + "compare_precisions", ("--splits", "3", "--seeds", "1"),
          ("--splits", "1", "--seeds", "1", "--folds", "2", "--epochs", "1",
           "--work", str(Path(tempfile.gettempdir()) / "ghanet-compare-precisions-smoke")), _has_demo),
    Entry("train_precision", P + "compare_precisions", ("--compare", "train-bf16", "--splits", "3", "--seeds", "1"),
          ("--compare", "train-bf16", "--splits", "1", "--seeds", "1", "--folds", "2", "--epochs", "1",
           "--work", str(Path(tempfile.gettempdir()) / "ghanet-train-precision-smoke")), _has_demo),
    Entry("seed_control", P + "compare_precisions", ("--compare", "seed", "--splits", "3", "--seeds", "1"),
          ("--compare", "seed", "--splits", "1", "--seeds", "1", "--folds", "2", "--epochs", "1",
           "--work", str(Path(tempfile.gettempdir()) / "ghanet-seed-control-smoke")), _has_demo),
    Entry("report", P + "bench_report", ("--repeats", "3", "--workers", "1,2"),
          ("--size", "4096", "--repeats", "1", "--workers", "1", "--cache", str(Path(tempfile.gettempdir())
                                                                                  / "ghanet-bench-report-smoke"))),
    Entry("rehearsal", P + "rehearsal", (),
          ("--cases", "8", "--patches", "64", "--folds", "2", "--epochs", "1", "--probe-cases", "6",
           "--predict-cases", "2", "--slide-px", "1024", "--rate-px", "2048", "--cache-gb", "0"), _has_mcat),
    Entry("distillation", P + "distillation",
          ("--seeds", "0-3", "--sweep", "cases", "--sweep-values", "60,120", "--sweep-seeds", "0",
           "--json", str(Path(tempfile.gettempdir()) / "ghanet-distill" / "distillation.json")),
          ("--seeds", "0", "--cases", "40", "--censoring", "0.3", "--folds", "2", "--test-cases", "40", "--train-args",
           "epochs=1,accum=4,lr=1e-3,dim=16", "--work", str(Path(tempfile.gettempdir()) / "ghanet-distill-smoke"),
           "--json", str(Path(tempfile.gettempdir()) / "ghanet-distill-smoke" / "distillation.json"))),
    Entry("gpu_check", "benchmarks/gpu_check.sh", (), ()),
)


def run_entry(entry: Entry, ctx: argparse.Namespace, env: dict[str, str]) -> tuple[str, str]:
    """Run one entry; (status, detail): status ``ok``, ``skipped`` or ``FAILED``."""
    why = entry.needs(ctx)
    if why:
        return "skipped", why
    argv = entry.argv(ctx)
    before = {p for p, _ in read_records(ctx.results)} if ctx.results.is_dir() else set()
    run_env = dict(env)
    if ctx.smoke and entry.bench == "gpu_check":
        run_env.update(SLIDES="2", SIDE="4096", BATCHES="64", BUDGET_S="150")
    print(f"\n=== {entry.bench}: {shlex.join(argv)}  (load average {load_average()})", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(argv, cwd=ROOT, env=run_env).returncode
    secs = time.perf_counter() - t0
    if rc != 0:
        return "FAILED", f"exit code {rc} after {secs:.0f} s"
    new = [(p, r) for p, r in read_records(ctx.results) if p not in before] if ctx.results.is_dir() else []
    mine = [p for p, r in new if r["bench"] == entry.bench]
    if entry.bench == "gpu_check" and not mine:
        return "ok", f"{secs:.0f} s, no record (no usable GPU here)"
    if not mine:
        return "FAILED", f"exit code 0 but no new valid {entry.bench} record in {ctx.results}"
    return "ok", f"{secs:.0f} s, record {mine[-1].name}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the commands and exit")
    ap.add_argument("--smoke", action="store_true", help="smallest sizes; records to a temporary folder by default")
    ap.add_argument("--only", nargs="+", default=None, metavar="BENCH")
    ap.add_argument("--skip", nargs="+", default=[], metavar="BENCH")
    ap.add_argument("--real-slide", type=Path, default=None, help="also time segment and the reader on this slide")
    ap.add_argument("--demo-out", type=Path, default=Path("demo-out"),
                    help="demo run for compare_models, compare_precisions, train_precision and seed_control")
    ap.add_argument("--mcat", type=Path, default=None,
                    help="folder of an MCAT table (*_all_clean.csv.zip, signatures.csv, splits_*/) for rehearsal")
    ap.add_argument("--results", type=Path, default=None, help="folder for the records")
    ctx = ap.parse_args(argv)
    known = [e.bench for e in SUITE]
    for name in (ctx.only or []) + ctx.skip:
        if name not in known:
            ap.error(f"unknown bench {name!r}; the suite has {', '.join(known)}")
    entries = [e for e in SUITE if (ctx.only is None or e.bench in ctx.only) and e.bench not in ctx.skip]
    if ctx.list:
        for e in entries:
            cmd = shlex.join(["python", "-m", e.module, *e.argv(ctx)[3:]]) if not e.module.endswith(".sh") \
                else shlex.join(e.argv(ctx))
            print(f"{e.bench:30s} {cmd}")
        return 0
    ctx.demo_out = ctx.demo_out.resolve()  # the entries run from the repository root
    ctx.real_slide = ctx.real_slide.resolve() if ctx.real_slide else None
    if ctx.results is None:
        ctx.results = Path(tempfile.mkdtemp(prefix="ghanet-bench-smoke-")) if ctx.smoke else ROOT / "benchmarks" / "results"
    ctx.results = ctx.results.resolve()
    ctx.results.mkdir(parents=True, exist_ok=True)
    # glibc malloc settings are each benchmark's to choose (the Makefile exports some for the other targets)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, "GHANET_BENCH_RESULTS": str(ctx.results)}
    outcome = [(e.bench, *run_entry(e, ctx, env)) for e in entries]
    print(f"\nsuite {'(smoke) ' if ctx.smoke else ''}records in {ctx.results}:")
    for bench, status, detail in outcome:
        print(f"  {bench:30s} {status:8s} {detail}")
    return 1 if any(s == "FAILED" for _, s, _ in outcome) else 0


if __name__ == "__main__":
    sys.exit(main())
