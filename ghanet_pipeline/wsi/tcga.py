"""TCGA slide barcodes: which kind of slide a TCGA slide id is, and the ``--slide-types`` filter.

A TCGA slide barcode is ``TCGA-<TSS>-<participant>-<sample+vial>-<portion>-<slide>``, e.g.
``TCGA-2F-A9KO-01Z-00-DX1``. The last field names the slide: ``DX<n>`` = a diagnostic slide (formalin-fixed,
paraffin-embedded: the slides MCAT, CLAM and the G-HANet paper use), ``TS``/``BS``/``MS`` = top, bottom,
middle section of a frozen tissue block (kept for quality control of the sample; frozen-section artefacts,
often small). A GDC "Slide Image" download holds both kinds unless the query asked for diagnostic slides.
:func:`filter_slide_types` is the one filter every stage uses (slides of ``segment``, ``extract-features``,
``calibrate-encoder``, ``predict``; bags of ``train``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..core.errors import ConfigError

log = logging.getLogger(__name__)

#: slide kinds of the TCGA barcode's slide field, in words
SLIDE_TYPES = {
    "DX": "diagnostic slide (formalin-fixed, paraffin-embedded)",
    "TS": "frozen section, top of the block",
    "BS": "frozen section, bottom of the block",
    "MS": "frozen section, middle of the block",
}
_BARCODE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-\d{2}[A-Z]?-\d{2}[A-Z]?-(?P<kind>[A-Z]{2})[0-9A-Z]*$",
                      re.IGNORECASE)
_PATIENT = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}$", re.IGNORECASE)

T = TypeVar("T")


def tcga_case_id(slide_id: str) -> str:
    """TCGA case (patient) barcode: the first 12 characters (``TCGA-XX-XXXX``)."""
    return slide_id[:12]


def is_tcga_patient(case_id: str) -> bool:
    """Whether ``case_id`` is a TCGA patient barcode (``TCGA-XX-XXXX``)."""
    return bool(_PATIENT.match(case_id))


def slide_type(slide_id: str) -> str | None:
    """``DX``, ``TS``, ``BS``, ``MS`` (upper case) for a TCGA slide barcode, else None."""
    m = _BARCODE.match(slide_id)
    return m.group("kind").upper() if m else None


def parse_slide_types(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``--slide-types DX`` / ``DX,TS`` -> ``("DX",)``; None / empty = every slide. Unknown kinds: ConfigError."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    kinds = tuple(dict.fromkeys(t.strip().upper() for t in items if t.strip()))
    if not kinds:
        return None
    bad = [k for k in kinds if k not in SLIDE_TYPES]
    if bad:
        raise ConfigError(f"--slide-types {','.join(bad)}: not a TCGA slide type; choose from "
                          + ", ".join(f"{k} ({v})" for k, v in SLIDE_TYPES.items()))
    return kinds


@dataclass
class TypeFilter:
    """What ``--slide-types`` left out: ids per slide type, ids that are no TCGA barcode (kept), and the cases
    left with no slide at all (case -> its slide ids and types)."""

    kinds: tuple[str, ...]
    n_in: int = 0
    left_out: dict[str, list[str]] = field(default_factory=dict)
    not_tcga: list[str] = field(default_factory=list)
    emptied_cases: dict[str, list[str]] = field(default_factory=dict)

    def message(self) -> str | None:
        """One line for the log (None when nothing was left out and every id was a TCGA barcode)."""
        parts = []
        n_out = sum(len(v) for v in self.left_out.values())
        if n_out:
            by = ", ".join(f"{k} {len(v)}" for k, v in sorted(self.left_out.items()))
            parts.append(f"--slide-types {','.join(self.kinds)}: left out {n_out} of {self.n_in} slide(s) ({by})")
        for case, ids in list(self.emptied_cases.items())[:10]:
            parts.append(f"case {case} has no {'/'.join(self.kinds)} slide (only {', '.join(ids)}) and is left out")
        if len(self.emptied_cases) > 10:
            parts.append(f"... {len(self.emptied_cases) - 10} more such case(s)")
        if self.not_tcga:
            parts.append(f"{len(self.not_tcga)} slide id(s) are not TCGA slide barcodes and are kept, e.g. "
                         f"{', '.join(self.not_tcga[:3])}")
        return "; ".join(parts) or None


def filter_slide_types(items: Iterable[T], kinds: Sequence[str] | None, id_of: Callable[[T], str],
                       case_of: Callable[[T], str] | None = None) -> tuple[list[T], TypeFilter | None]:
    """Keep the items whose TCGA slide type is in ``kinds`` (all items when ``kinds`` is None).

    ``id_of(item)`` gives the slide id (file name rule applied); ``case_of(item)`` the case, to name cases
    that lose every slide. Items whose id is no TCGA slide barcode are kept and counted. The report is also
    logged as a warning.
    """
    items = list(items)
    if not kinds:
        return items, None
    report = TypeFilter(kinds=tuple(kinds), n_in=len(items))
    kept: list[T] = []
    by_case: dict[str, list[tuple[str, bool]]] = {}
    for it in items:
        sid = id_of(it)
        kind = slide_type(sid)
        keep = kind is None or kind in kinds
        if kind is None:
            report.not_tcga.append(sid)
        elif not keep:
            report.left_out.setdefault(kind, []).append(sid)
        if keep:
            kept.append(it)
        if case_of is not None:
            by_case.setdefault(case_of(it), []).append((f"{sid} ({kind})" if kind else sid, keep))
    report.emptied_cases = {c: [s for s, _ in v] for c, v in by_case.items() if not any(k for _, k in v)}
    msg = report.message()
    if msg:
        log.warning("%s", msg)
    return kept, report
