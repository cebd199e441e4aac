"""The slides a per-slide stage works on, from what the user gave, checked before any work.

:func:`gather_slides` is what ``segment``, ``extract-features``, ``calibrate-encoder`` and ``predict`` call:

1. slide files, folders (``--recursive``), globs and a manifest CSV -> :class:`SlideSpec` (``inputs``; a
   gdc-client download's ``logs/``, ``*.parcel``, ``MANIFEST.txt`` and ``annotations.txt`` are never slides);
2. a GDC manifest (``--gdc-manifest FILE``, or ``MANIFEST.txt`` at the top of a given folder): rows meet
   files by ``<file uuid folder>/<file name>``, wherever the download lies; when a folder was given, each
   listed slide file it lacks becomes a slide of its own that fails, named with its file;
3. ``--slide-types`` (``wsi.tcga.filter_slide_types``) keeps e.g. only the diagnostic (``DX``) slides;
4. ``--shard i/n``;
5. the GDC check (``wsi.gdc.verify_downloads``: size, then MD5, remembered in ``<out>/cache/gdc-md5.json``):
   a missing, truncated or damaged file gets ``spec.problem``, and the stage reports that slide as failed
   (exit 1) while the others run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..core.slideids import slide_id_from_name
from .gdc import GdcEntry, find_gdc_manifest, read_gdc_manifest, verify_downloads
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
        dirs = [Path(i) for i in inputs if Path(i).is_dir()]
        have = {_key(s.path) for s in specs}
        if dirs:  # a download folder was given: each listed file it lacks is a slide that fails
            specs = sanitise_specs(specs + [_absent(e, dirs[0], case_id_from, mpp) for e in entries
                                            if (e.file_id, e.filename) not in have])
        log.info("GDC manifest %s: %d slide file(s) listed; checking size and MD5 of those given", gm, len(entries))
    specs, _ = filter_slide_types(specs, kinds, lambda s: s.slide_id, lambda s: s.case_id)
    specs = take_shard(specs, shard)
    if entries:
        _check(specs, entries, out, verify_workers, gm)
    return specs


def cohort_slides(inputs: Sequence[str | Path] = (), manifest: Path | str | None = None, recursive: bool = False,
                  case_id_from: str | None = None, mpp: float | None = None,
                  slide_types: str | Sequence[str] | None = None) -> list[SlideSpec]:
    """Every slide of the cohort, as each shard job sees it (no ``--shard``, no GDC check): what a
    cohort-level step such as int8 calibration samples, so that all shards make the same model."""
    specs = collect_slides(inputs, manifest, recursive, case_id_from, mpp)
    specs, _ = filter_slide_types(specs, parse_slide_types(slide_types), lambda s: s.slide_id, lambda s: s.case_id)
    return specs


def _key(path: Path) -> tuple[str, str]:
    """(file uuid folder, file name): how a manifest row and a file on disk are matched, wherever the
    download folder is."""
    return path.parent.name, path.name


def _absent(e: GdcEntry, root: Path, case_id_from: str | None, mpp: float | None) -> SlideSpec:
    sid = slide_id_from_name(e.filename)
    return SlideSpec(slide_id=sid, path=root / e.file_id / e.filename, case_id=case_id_for(sid, None, case_id_from),
                     mpp=mpp, raw_slide_id=sid)


def _check(specs: list[SlideSpec], entries: list[GdcEntry], out: Path | str | None, workers: int | None,
           gm: Path) -> None:
    """Give each spec whose file fails the GDC check its ``problem`` (the files checked are the specs' own)."""
    by_key = {(e.file_id, e.filename): e for e in entries}
    mine = {s.path: replace(by_key[_key(s.path)], path=s.path) for s in specs if _key(s.path) in by_key}
    cache = Path(out) / GDC_CACHE if out is not None else None
    problems = verify_downloads(mine.values(), cache, workers)
    for s in specs:
        s.problem = problems.get(s.path, s.problem)
    if problems:
        log.warning("GDC check: %d of %d slide file(s) are missing or damaged and fail; the others go on",
                    len(problems), len(mine))
    if len(mine) < len(specs):
        log.info("GDC check: %d slide(s) are not in %s and were not checked", len(specs) - len(mine), gm)
