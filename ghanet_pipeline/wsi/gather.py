"""The slides a per-slide stage works on, from what the user gave, checked before any work.

:func:`gather_slides` is what ``segment``, ``extract-features``, ``calibrate-encoder`` and ``predict`` call:

1. slide files, folders (``--recursive``), globs and a manifest CSV -> :class:`SlideSpec` (``inputs``; a
   gdc-client download's ``logs/``, ``*.parcel``, ``MANIFEST.txt`` and ``annotations.txt`` are never slides);
2. a GDC manifest (``--gdc-manifest FILE``, or ``MANIFEST.txt`` at the top of a given folder): each listed
   slide file that is absent on disk becomes a slide of its own that fails, named with its file;
3. ``--slide-types`` (``wsi.tcga.filter_slide_types``) keeps e.g. only the diagnostic (``DX``) slides;
4. ``--shard i/n``;
5. the GDC check (``wsi.gdc.verify_downloads``: size, then MD5, remembered in ``<out>/cache/gdc-md5.json``):
   a missing, truncated or damaged file gets ``spec.problem``, and the stage reports that slide as failed
   (exit 1) while the others run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..core.slideids import slide_id_from_name
from .gdc import find_gdc_manifest, read_gdc_manifest, verify_downloads
from .inputs import SLIDE_EXTENSIONS, SlideSpec, case_id_for, collect_slides, sanitise_specs, take_shard
from .tcga import filter_slide_types, parse_slide_types

log = logging.getLogger(__name__)

#: the GDC check's cache, under the output root
GDC_CACHE = Path("cache") / "gdc-md5.json"


def gather_slides(inputs: Sequence[str | Path] = (), manifest: Path | str | None = None, recursive: bool = False,
                  case_id_from: str | None = None, mpp: float | None = None, *, out: Path | str | None = None,
                  gdc_manifest: Path | str | None = None, slide_types: str | Sequence[str] | None = None,
                  shard: tuple[int, int] | None = None, verify_workers: int | None = None) -> list[SlideSpec]:
    """Slides to process (steps in the module doc). ``out``: the output root that holds the GDC cache
    (None = no cache). Specs of downloads that fail the check carry ``problem``."""
    kinds = parse_slide_types(slide_types)
    specs = collect_slides(inputs, manifest, recursive, case_id_from, mpp)
    gm = Path(gdc_manifest) if gdc_manifest is not None else find_gdc_manifest(inputs)
    entries = []
    if gm is not None:
        entries = [e for e in read_gdc_manifest(gm) if Path(e.filename).suffix.lower() in SLIDE_EXTENSIONS]
        given_dirs = {Path(i).resolve() for i in inputs if Path(i).is_dir()}
        have = {s.path.resolve() for s in specs}
        if gm.parent.resolve() in given_dirs:  # the whole download was given: absent files are failed slides
            absent = [e for e in entries if e.path.resolve() not in have and not e.path.exists()]
            specs = specs + [SlideSpec(slide_id=slide_id_from_name(e.filename), path=e.path, mpp=mpp,
                                       case_id=case_id_for(slide_id_from_name(e.filename), None, case_id_from),
                                       raw_slide_id=slide_id_from_name(e.filename)) for e in absent]
            specs = sanitise_specs(specs)
        log.info("GDC manifest %s: %d slide file(s) listed; checking size and MD5 of those given", gm, len(entries))
    specs, _ = filter_slide_types(specs, kinds, lambda s: s.slide_id, lambda s: s.case_id)
    specs = take_shard(specs, shard)
    if entries:
        by_path = {e.path.resolve(): e for e in entries}
        mine = [by_path[s.path.resolve()] for s in specs if s.path.resolve() in by_path]
        cache = Path(out) / GDC_CACHE if out is not None else None
        problems = {p.resolve(): msg for p, msg in verify_downloads(mine, cache, verify_workers).items()}
        for s in specs:
            s.problem = problems.get(s.path.resolve(), s.problem)
        if problems:
            log.warning("GDC check: %d of %d slide file(s) are missing or damaged and fail; the others go on",
                        len(problems), len(mine))
        not_listed = sum(s.path.resolve() not in by_path for s in specs)
        if not_listed:
            log.info("GDC check: %d slide(s) are not in %s and were not checked", not_listed, gm)
    return specs
