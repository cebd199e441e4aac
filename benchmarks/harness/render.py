"""Markdown of a record: a caption naming the command, CPU, torch, commit and load, then one table per
``table`` of its rows (columns in first-seen order, headings with units), then its notes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .machine import ROOT

#: column headings of common field names (a record's own ``labels`` come first)
DEFAULT_LABELS = {"seconds": "time", "peak_rss_gib": "peak RSS", "patches_per_s": "patches/s"}


def provisional(record: dict[str, Any]) -> bool:
    """The machine was busy before the run started: 1-minute load above max(1.5, cores / 4)."""
    before = record["load"].get("before") or []
    cores = record["machine"].get("cores") or 1
    return bool(before) and before[0] > max(1.5, cores / 4)


def fmt_number(x: float, unit: str = "") -> str:
    """A figure with about three significant digits; ratios as ``1.04x``."""
    if unit == "x":
        return f"{x:.2f}x" if abs(x) < 10 else f"{x:.1f}x" if abs(x) < 100 else f"{x:,.0f}x"
    if isinstance(x, int) or float(x).is_integer() and abs(x) >= 1000:
        return f"{int(x):,}" if abs(x) >= 10000 else str(int(x))
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.01:
        return f"{x:.3f}"
    return "0" if x == 0 else f"{x:.2g}"


def cell(value: Any, unit: str = "") -> str:
    """One table cell: min / median of a repeated measurement, a number, or text."""
    if value is None:
        return ""
    if isinstance(value, dict) and "median" in value:
        if value.get("n", 2) == 1:
            return fmt_number(value["median"], unit)
        return f"{fmt_number(value['min'], unit)} / {fmt_number(value['median'], unit)}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return fmt_number(value, unit)
    return str(value).replace("|", "\\|")


def table_names(record: dict[str, Any]) -> list[str]:
    """The record's tables, in the order of their first row."""
    names: list[str] = []
    for row in record["rows"]:
        if row.get("table", "main") not in names:
            names.append(row.get("table", "main"))
    return names


def render_table(record: dict[str, Any], table: str = "main") -> str:
    rows = [r for r in record["rows"] if r.get("table", "main") == table]
    if not rows:
        raise KeyError(f"record of {record['bench']} has no table {table!r} (it has {table_names(record)})")
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k != "table" and k not in cols]
    units, labels = record["units"], record["labels"]
    repeated = {k for k in cols if any(isinstance(r.get(k), dict) and r[k].get("n", 2) > 1 for r in rows)}
    numeric = {k for k in cols if k in units}

    def head(k: str) -> str:
        unit = units.get(k, "")
        text = labels.get(k) or DEFAULT_LABELS.get(k) or k.replace("_", " ")
        if unit and unit != "x" and not re.search(rf"(^|[\s(]){re.escape(unit)}($|[\s),])", text):
            text += f" ({unit})"
        return text + (" min / median" if k in repeated else "")

    lines = ["| " + " | ".join(head(k) for k in cols) + " |",
             "|" + "|".join("---:" if k in numeric else "---" for k in cols) + "|"]
    lines += ["| " + " | ".join(cell(r.get(k), units.get(k, "")) for k in cols) + " |" for r in rows]
    return "\n".join(lines)


def _isa(flags: list[str]) -> str:
    have = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                    ("amx_bf16", "AMX-BF16")) if flag in flags]
    missing = [name for flag, name in (("avx512f", "AVX-512"), ("amx_tile", "AMX")) if flag not in flags]
    return ", ".join(have + [f"no {m}" for m in missing]) or "no AVX2"


def shown_command(command: str) -> str:
    """The command as the docs show it: an absolute path argument by its file name (the machine's folders
    mean nothing to a reader; the record keeps the full ``argv``)."""
    return " ".join(Path(t).name if t.startswith("/") and len(t) > 1 else t for t in command.split(" "))


def caption(record: dict[str, Any], path: Path | None = None) -> str:
    """One line: command, CPU (instruction sets, cores), torch, GPUs, commit, date, load before / after."""
    m, load = record["machine"], record["load"]
    parts = [f"`{shown_command(record['command'])}`"]
    parts.append(f"CPU {m['cpu_model']} ({_isa(m.get('cpu_flags', []))}; {m.get('cores')} cores)")
    if m.get("torch"):
        parts.append(f"torch {m['torch']} ({m.get('torch_threads')} threads in the main process)")
    if m.get("gpus"):
        parts.append("GPU " + ", ".join(m["gpus"]))
    if m.get("commit"):
        parts.append(f"commit {m['commit'][:10]}{' + local changes' if m.get('dirty') else ''}")
    parts.append(record["started"][:16].replace("T", " ") + " UTC")
    fmt = "/".join
    if load.get("before"):
        parts.append(f"load average {fmt(f'{v:.1f}' for v in load['before'])} before, "
                     f"{fmt(f'{v:.1f}' for v in load.get('after') or [])} after")
    if path is not None:
        p = Path(path).resolve()
        parts.append(f"record `{p.relative_to(ROOT) if ROOT in p.parents else p.name}`")
    text = " · ".join(parts)
    if provisional(record):
        text += " · **provisional: the machine was busy before the run**"
    return f"_{text}_"


def short_caption(record: dict[str, Any], path: Path | None = None) -> str:
    """The caption of a record's further tables: which record, which CPU."""
    name = f"record `{Path(path).name}`" if path is not None else f"bench `{record['bench']}`"
    text = f"Same run ({name}), CPU {record['machine']['cpu_model']}"
    return f"_{text}{' · **provisional**' if provisional(record) else ''}._"


def render_block(record: dict[str, Any], table: str = "main", path: Path | None = None) -> str:
    """Caption, table and that table's notes: what a ``<!-- bench:NAME -->`` marker in the docs holds (the full
    caption for table ``main``, a short one naming the record and CPU for its other tables)."""
    notes = [n["text"] for n in record["notes"] if n.get("table", "main") == table]
    head = caption(record, path) if table == "main" else short_caption(record, path)
    out = [head, "", render_table(record, table)]
    if notes:
        out += [""] + [f"- {t}" for t in notes]
    return "\n".join(out)


def render_record(record: dict[str, Any], path: Path | None = None) -> str:
    """The whole record as Markdown (what a benchmark prints at the end)."""
    parts = [f"{record['title']}", caption(record, path)]
    for name in table_names(record):
        notes = [n["text"] for n in record["notes"] if n.get("table", "main") == name]
        parts += [("" if name == "main" else f"{name}:\n") + render_table(record, name)]
        if notes:
            parts.append("\n".join(f"- {t}" for t in notes))
    return "\n\n".join(parts)
