"""Write a record for a benchmark that is not Python (e.g. benchmarks/gpu_check.sh).

    python -m benchmarks.harness record NAME ROWS.jsonl --title TEXT [--unit KEY=UNIT ...] [--label KEY=TEXT ...]
        [--param KEY=VALUE ...] [--note TEXT ...] [--load-before "1 5 15"] [--started ISO] [--results DIR] -- ARGV...

Each line of ROWS.jsonl is one row (a JSON object; ``"table"`` picks the table). The record gets this machine's
facts, the load now as "after", and ``--load-before`` / ``--started`` as measured by the caller at its start.
Prints the tables and the record's path, like every benchmark; exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from .record import Bench


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--{what} {item!r}: expected KEY=VALUE")
        out[key] = val
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.harness", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    rec = sub.add_parser("record", help="write one record from rows in a JSON-lines file")
    rec.add_argument("name")
    rec.add_argument("rows", type=Path)
    rec.add_argument("--title", required=True)
    rec.add_argument("--unit", action="append", default=[])
    rec.add_argument("--label", action="append", default=[])
    rec.add_argument("--param", action="append", default=[])
    rec.add_argument("--note", action="append", default=[])
    rec.add_argument("--load-before", default=None, help='the caller\'s load average at its start: "1 5 15"')
    rec.add_argument("--started", default=None, help="the caller's start, ISO 8601 UTC")
    rec.add_argument("--results", type=Path, default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else []  # the command that measured
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        print(f"{args.rows}: {e}", file=sys.stderr)
        return 2
    if not rows or not all(isinstance(r, dict) for r in rows):
        print(f"{args.rows}: no rows (one JSON object per line)", file=sys.stderr)
        return 2
    bench = Bench(args.name, args.title, _pairs(args.param, "param"), units=_pairs(args.unit, "unit"),
                  labels=_pairs(args.label, "label"), results=args.results, argv=command or [args.name])
    with bench:
        if args.started:
            bench.started = dt.datetime.fromisoformat(args.started.replace("Z", "+00:00"))
        if args.load_before:
            bench.load_before = [float(v) for v in args.load_before.split()[:3]]
        for r in rows:
            bench.row(**r)
        for n in args.note:
            bench.note(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
