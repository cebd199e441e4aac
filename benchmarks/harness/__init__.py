"""The benchmark harness: machine facts, one timing helper, worker subprocesses, interleaved rounds, and one
JSON record per run (schema in :mod:`.record` and docs/benchmarks.md).

A benchmark::

    with Bench("segment", "Seconds per slide for segment", args) as bench:
        bench.unit("seconds", "s")
        secs, _ = timed(lambda: work(), repeats=3)
        bench.row(step="whole segment_slide", seconds=secs)
"""

from .machine import ROOT, load_average, machine_facts
from .record import RESULTS, SCHEMA, Bench, add_record_args, check_record, newest_records, read_records, write_record
from .render import render_block, render_record, render_table
from .timing import Rounds, Stats, interleave, ratio, stats, timed
from .workers import ProcessRun, WorkerFailed, call_worker, emit, module_command, run_process

__all__ = ["ROOT", "RESULTS", "SCHEMA", "Bench", "ProcessRun", "Rounds", "Stats", "WorkerFailed", "add_record_args",
           "call_worker", "check_record", "emit", "interleave", "load_average", "machine_facts", "module_command",
           "newest_records", "ratio", "read_records", "render_block", "render_record", "render_table", "run_process",
           "stats", "timed", "write_record"]
