"""The one slide-id rule, and how slide ids from a table meet the bags (or slides) on disk.

A slide's id is its file name up to the first dot:
``TCGA-2F-A9KO-01Z-00-DX1.195576CF-B739-4BD9-B15B-4A70AE287D3E.svs`` -> ``TCGA-2F-A9KO-01Z-00-DX1``,
``x.ome.tiff`` -> ``x``, ``S01`` -> ``S01``. Slide files found on disk, bags, and every slide id read from a
table (a manifest's ``slide_id``, an MCAT table's ``slide_id``, the genomics ``cases.csv``) go through
:func:`slide_id_from_name`, so an MCAT table, whose ``slide_id`` column holds GDC file names, finds its bags
with no manifest and no flag. A DICOM WSI folder is one slide named after the folder (``wsi.inputs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import InputError
from .ids import sanitize_id

#: the rule, in words, for messages and docs
RULE = "a slide's id is its file name up to the first dot (TCGA-XX-XXXX-01Z-00-DX1.<uuid>.svs -> TCGA-XX-XXXX-01Z-00-DX1)"


def slide_id_from_name(name: str) -> str:
    """The slide id of a file name (pass ``path.name``) or of a table's slide id: the text up to the first dot.

    A name that starts with a dot keeps its text up to the next dot (``.x.svs`` -> ``.x``); an empty
    name stays empty.
    """
    base = str(name).strip()
    head = base.split(".")[0]
    if head or not base:
        return head
    rest = base[1:].split(".")[0]
    return "." + rest if rest else base


@dataclass
class IdMatch:
    """How the slide ids of a table met the ids on disk.

    ``found``: case -> matched disk ids (table order); ``cases_without``: cases none of whose slides was
    found; ``slides_without``: (case, table slide id) pairs not found, of cases that found others;
    ``unclaimed``: disk ids no case claims.
    """

    found: dict[str, list[str]] = field(default_factory=dict)
    cases_without: list[str] = field(default_factory=list)
    slides_without: list[tuple[str, str]] = field(default_factory=list)
    unclaimed: list[str] = field(default_factory=list)

    def warning(self, table: str, disk: str, n_cases: int, item: str = "slide") -> str | None:
        """One message with the counts and examples from both sides; None when everything met."""
        if not (self.cases_without or self.slides_without or self.unclaimed):
            return None
        parts = []
        if self.slides_without:
            ex = ", ".join(f"{s} (case {c})" for c, s in self.slides_without[:5])
            parts.append(f"{len(self.slides_without)} slide(s) listed in {table} have none in {disk} (their cases "
                         f"go on with their other slides), e.g. {ex}")
        if self.cases_without:
            parts.append(f"{len(self.cases_without)} of {n_cases} case(s) have no {item} and are skipped: "
                         f"{', '.join(self.cases_without[:20])}{' ...' if len(self.cases_without) > 20 else ''}")
        if self.unclaimed:
            parts.append(f"{len(self.unclaimed)} id(s) in {disk} belong to no case of {table}, e.g. "
                         f"{', '.join(self.unclaimed[:5])}")
        return "slide ids do not all meet (" + RULE + "): " + "; ".join(parts)


def match_slide_ids(case_slides: Mapping[str, Sequence[str]], disk_ids: Iterable[str]) -> IdMatch:
    """Meet each case's table slide ids with the ids on disk, both under the slide-id rule.

    ``disk_ids`` are already ids (bag stems, slide ids); table ids may be file names. A disk id is
    matched by its rule id too, so bags named after whole file names still meet.
    """
    by_rule: dict[str, str] = {}
    for d in disk_ids:
        by_rule.setdefault(d, d)
        by_rule.setdefault(slide_id_from_name(d), d)
    res = IdMatch()
    claimed: set[str] = set()
    for case, slides in case_slides.items():
        hits: list[str] = []
        for s in slides:
            d = by_rule.get(slide_id_from_name(s)) or by_rule.get(_safe(slide_id_from_name(s)))
            if d is None:
                res.slides_without.append((case, s))
            elif d not in hits:
                hits.append(d)
        if hits:
            res.found[case] = hits
            claimed.update(hits)
        else:
            res.cases_without.append(case)
    res.slides_without = [(c, s) for c, s in res.slides_without if c in res.found]  # the rest: cases_without
    res.unclaimed = sorted(set(by_rule.values()) - claimed)
    return res


def _safe(sid: str) -> str:
    """``sid`` as a file-name stem (how bags of ids with unsafe characters are named); "" when unusable."""
    try:
        return sanitize_id(sid, "slide_id")
    except InputError:
        return ""
