"""One JSON record per benchmark run (:class:`Bench`), written to ``benchmarks/results/<bench>-<UTC time>.json``.

Record (schema ``ghanet-bench/1``; docs/benchmarks.md "Records" says the same)::

    {"schema": "ghanet-bench/1", "bench": "segment", "title": "...", "argv": [...], "command": "python -m ...",
     "started": "2026-12-04T10:15:00Z", "seconds": 81.2, "params": {...parsed options...},
     "machine": {...machine_facts()...}, "load": {"before": [1, 5, 15 min], "after": [...]},
     "units": {"seconds": "s", ...}, "labels": {"seconds": "whole step", ...},
     "rows": [{"table": "main", "step": "...", "seconds": {"min", "median", "max", "n", "values"}, ...}],
     "notes": [{"table": "main", "text": "..."}], "data": {...raw values kept beside the rows, optional...}}

A row's fields are text, numbers or :class:`~.timing.Stats` (stored as min / median / max / n / values); every
numeric field has a unit in ``units`` ("" for a count, "x" for a ratio).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .machine import ROOT, load_average, machine_facts
from .timing import Stats

SCHEMA = "ghanet-bench/1"
#: where records go unless ``--results`` or ``GHANET_BENCH_RESULTS`` says otherwise
RESULTS = ROOT / "benchmarks" / "results"
_NAME = re.compile(r"^[a-z0-9_]+$")
_TOP_KEYS = ("schema", "bench", "title", "argv", "command", "started", "seconds", "params", "machine", "load",
             "units", "labels", "rows", "notes")


def add_record_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: where its record goes."""
    parser.add_argument("--results", type=Path, default=None,
                        help="folder for this run's JSON record (default: $GHANET_BENCH_RESULTS, else benchmarks/results)")


def command_line(argv: list[str]) -> str:
    """``argv`` as the command a reader types (``python -m benchmarks.x ...`` for a module of this package),
    without ``--results`` (where the record went is not part of the measurement)."""
    head, rest = argv[0], list(argv[1:])
    for i, arg in enumerate(rest):
        if arg == "--results":
            del rest[i:i + 2]
            break
        if arg.startswith("--results="):
            del rest[i]
            break
    path = Path(head).resolve()
    if path.suffix == ".py" and ROOT / "benchmarks" in path.parents:
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        return shlex.join(["python", "-m", mod, *rest])
    return shlex.join([head, *rest])


def _jsonable(value: Any) -> Any:
    if isinstance(value, Stats):
        return value.to_json()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf: an undefined figure is stored as null
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class Bench:
    """One run of a benchmark: ``with Bench("segment", "title", args) as b: b.row(step=..., seconds=stats)``.

    On a clean exit the record is written (atomically) and its tables printed; on an exception nothing is
    written. ``units`` / ``labels`` map field names to units and column headings.
    """

    def __init__(self, name: str, title: str, args: argparse.Namespace | dict[str, Any] | None = None, *,
                 units: dict[str, str] | None = None, labels: dict[str, str] | None = None,
                 results: Path | str | None = None, argv: list[str] | None = None) -> None:
        if not _NAME.match(name):
            raise ValueError(f"bench name {name!r}: use lower-case letters, digits and _")
        params = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
        self.results = Path(results or params.pop("results", None) or os.environ.get("GHANET_BENCH_RESULTS") or RESULTS)
        params.pop("results", None)
        self.name, self.title, self.params = name, title, params
        self.units, self.labels = dict(units or {}), dict(labels or {})
        self.argv = list(argv if argv is not None else sys.argv)
        self.rows: list[dict[str, Any]] = []
        self.notes: list[dict[str, str]] = []
        #: raw values kept in the record beside the rows (not shown in tables), e.g. every replicate of a run
        self.data: dict[str, Any] = {}
        self.path: Path | None = None

    def unit(self, key: str, unit: str, label: str | None = None) -> None:
        """Declare a field's unit ("" for counts, "x" for ratios) and, optionally, its column heading."""
        self.units[key] = unit
        if label is not None:
            self.labels[key] = label

    def row(self, table: str = "main", **fields: Any) -> dict[str, Any]:
        """Add one row of named measurements to ``table``; returns it (fields can be added later)."""
        row = {"table": table, **fields}
        self.rows.append(row)
        return row

    def note(self, text: str, table: str = "main") -> None:
        """A line printed (and shown in the docs) under ``table``."""
        self.notes.append({"table": table, "text": text})

    def __enter__(self) -> Bench:
        self.started = dt.datetime.now(dt.UTC)
        self.load_before = load_average()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:  # noqa: ANN001
        if exc_type is not None:
            return False
        record = self.record()
        problems = check_record(record)
        if problems:
            raise ValueError(f"benchmark {self.name} made an invalid record: {problems}")
        self.path = write_record(record, self.results)
        from .render import render_record

        print("\n" + render_record(record, self.path), flush=True)
        print(f"\nrecord: {self.path}", flush=True)
        return False

    def record(self) -> dict[str, Any]:
        """The JSON record of the run so far (machine facts and load read now)."""
        return _jsonable({
            "schema": SCHEMA, "bench": self.name, "title": self.title, "argv": self.argv,
            "command": command_line(self.argv), "started": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds": round(time.perf_counter() - self.t0, 3), "params": self.params, "machine": machine_facts(),
            "load": {"before": self.load_before, "after": load_average()}, "units": self.units,
            "labels": self.labels, "rows": self.rows, "notes": self.notes, "data": self.data})


def check_record(record: Any) -> list[str]:
    """What is wrong with a record (empty list: valid)."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    bad = [f"missing {k!r}" for k in _TOP_KEYS if k not in record]
    if bad:
        return bad
    if record["schema"] != SCHEMA:
        bad.append(f"schema {record['schema']!r}, expected {SCHEMA!r}")
    if not isinstance(record["bench"], str) or not _NAME.match(record["bench"]):
        bad.append(f"bench name {record['bench']!r}")
    for k in ("cpu_model", "cpu_flags", "cores", "commit"):
        if k not in record["machine"]:
            bad.append(f"machine facts lack {k!r}")
    if not isinstance(record["rows"], list) or not record["rows"]:
        bad.append("no rows")
        return bad
    for i, row in enumerate(record["rows"]):
        for key, val in row.items():
            numeric = isinstance(val, int | float) and not isinstance(val, bool)
            if isinstance(val, dict):
                if not {"min", "median", "max", "values"} <= set(val):
                    bad.append(f"row {i} field {key!r}: a dict that is not min / median / max / values")
                    continue
                numeric = True
            if numeric and key not in record["units"]:
                bad.append(f"row {i} field {key!r} has no unit")
    return bad


def write_record(record: dict[str, Any], folder: Path | str = RESULTS) -> Path:
    """Write ``record`` to ``folder/<bench>-<YYYYmmddTHHMMSSZ>.json`` (never over an existing record)."""
    from ghanet_pipeline.core.files import write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = record["started"].replace("-", "").replace(":", "")
    path, k = folder / f"{record['bench']}-{stamp}.json", 1
    while path.exists():
        k += 1
        path = folder / f"{record['bench']}-{stamp}-{k}.json"
    write_json_atomic(path, record)
    return path


def read_records(folder: Path | str = RESULTS) -> list[tuple[Path, dict[str, Any]]]:
    """Every valid record in ``folder`` (invalid files are skipped with a warning on stderr)."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        problems = check_record(rec)
        if problems:
            print(f"skipping {path}: {'; '.join(problems)}", file=sys.stderr)
            continue
        out.append((path, rec))
    return out


def newest_records(folder: Path | str = RESULTS) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The newest record of each bench (by start time, then file name)."""
    newest: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, rec in read_records(folder):
        key = (rec["started"], path.name)
        have = newest.get(rec["bench"])
        if have is None or key > (have[1]["started"], have[0].name):
            newest[rec["bench"]] = (path, rec)
    return newest

