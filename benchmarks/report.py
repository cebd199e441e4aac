"""Rewrite the generated tables of docs/benchmarks.md from the newest benchmark records.

Every block ``<!-- bench:NAME -->`` ... ``<!-- /bench -->`` (or ``<!-- bench:NAME:TABLE -->`` for a record's
other tables) is replaced by the caption, table and notes of the newest record of bench ``NAME`` in
``benchmarks/results/``; everything outside the markers is left as written. A block whose bench has no
record yet is left alone (and named on stderr).

    python -m benchmarks.report [--doc docs/benchmarks.md] [--results benchmarks/results] [--check]

``--check``: change nothing, exit 1 if a doc is not what the records give (or a marker has no record).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, ROOT, newest_records, render_block

MARKER = re.compile(r"(<!-- bench:(?P<name>[a-z0-9_]+)(?::(?P<table>[a-z0-9_]+))? -->\n)(?P<body>.*?)(<!-- /bench -->)",
                    re.DOTALL)


def rewrite(text: str, records: dict[str, tuple[Path, dict[str, Any]]]) -> tuple[str, list[str]]:
    """``text`` with every marked block regenerated; and the markers that have no record."""
    missing: list[str] = []

    def block(m: re.Match) -> str:
        name, table = m["name"], m["table"] or "main"
        if name not in records:
            missing.append(name if table == "main" else f"{name}:{table}")
            return m.group(0)
        path, rec = records[name]
        return f"{m.group(1)}{render_block(rec, table, path)}\n{m.group(5)}"

    return MARKER.sub(block, text), missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", type=Path, action="append", help="Markdown file(s) to rewrite (default docs/benchmarks.md)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc is out of date")
    args = ap.parse_args(argv)
    records = newest_records(args.results)
    stale = False
    for doc in args.doc or [ROOT / "docs" / "benchmarks.md"]:
        old = doc.read_text()
        new, missing = rewrite(old, records)
        for name in missing:
            print(f"{doc}: no record for <!-- bench:{name} --> in {args.results}; block left as it is", file=sys.stderr)
        if args.check:
            stale |= new != old or bool(missing)
            print(f"{doc}: {'out of date' if new != old else 'up to date'}")
        elif new != old:
            from ghanet_pipeline.core.files import write_text_atomic

            write_text_atomic(doc, new)
            print(f"{doc}: rewritten from {len(records)} bench record(s)")
        else:
            print(f"{doc}: unchanged")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
