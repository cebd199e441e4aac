"""``ghanet report``: write ``<out>/report/`` (index page, one page per predicted slide, assets).

The folder is static: ``index.html`` opens from disk (``file://``) or behind any static web server, and
every script, style, tile and image it uses is inside it (OpenSeadragon included); nothing is fetched
with XHR/fetch (browsers refuse those for ``file://`` pages), data reach the pages as ``<script src>``
files. Layout::

    report/index.html            runs, results, the case table, links to the slide pages
    report/report.json           what this build made: settings, pages, sizes, seconds
    report/assets/               report.css, table.js, viewer.js, openseadragon/ (pinned, unmodified)
    report/assets/runs/<run>/    the training runs' figures (copies)
    report/slides/<slide>.html   one page per predicted slide (+ slides/<slide>/data.js, top/)
    report/pyramids/<slide>/     its deep-zoom pyramid (reused while slide file and settings are unchanged)

Writes are atomic: each file through a temporary file and a rename, each pyramid and gallery folder
built under a temporary name and renamed when complete; ``index.html`` is written last. One build at a
time per output root (a lock in ``<out>/.locks/report/``); temporaries of killed builds are removed.
Pages and pyramids of slides no longer predicted are removed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.files import atomic_path, remove_stale_temps, write_json_atomic, write_text_atomic
from ..core.locks import OutputLocks
from . import pages, vendor
from .gather import RunFolder, gather
from .indexpage import figure_urls, index_context
from .layers import SlideScores, share_scales, slide_layers
from .pyramid import DEFAULT_MAX_MPP, TEMP_SUFFIX, PyramidSettings
from .slidepage import SlidePage, build_pages, human_bytes
from .stats import N_BOOT


@dataclass
class ReportConfig:
    """Options of :func:`build_report`. ``viewer_max_mpp``: finest um/px of the slide pyramids (None =
    the previous report's value, else :data:`DEFAULT_MAX_MPP`); ``workers``: processes cutting tiles;
    ``slide_paths`` / ``slide_mpp``: slide id -> file / level-0 um/px, for slides whose prediction
    record does not name the file (or to point at a moved one)."""

    viewer_max_mpp: float | None = None
    workers: int = 1
    slide_paths: dict[str, Path] = field(default_factory=dict)
    slide_mpp: dict[str, float] = field(default_factory=dict)
    n_boot: int = N_BOOT


@dataclass
class ReportResult:
    """A finished build: ``index`` path, ``pages`` (one per predicted slide), ``bytes`` of the whole
    folder, ``seconds`` of the build, the ``viewer_max_mpp`` used."""

    dir: Path
    index: Path
    pages: list[SlidePage]
    bytes: int
    n_files: int
    seconds: float
    viewer_max_mpp: float

    @property
    def ok(self) -> bool:
        return all(p.status != "failed" for p in self.pages)

    @property
    def size(self) -> str:
        return human_bytes(self.bytes)


def _previous_mpp(report: Path) -> float | None:
    try:
        return float(json.loads((report / "report.json").read_text(encoding="utf-8"))["viewer_max_mpp"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_temps(report: Path) -> None:
    """Leftovers of killed builds: temporary folders (pyramids, galleries) and files."""
    for parent in (report / "pyramids", *sorted((report / "slides").glob("*/"))):
        for d in parent.glob(f".*{TEMP_SUFFIX}") if parent.is_dir() else []:
            shutil.rmtree(d, ignore_errors=True)
    for d in [report, *[p for p in report.rglob("*") if p.is_dir()]]:
        remove_stale_temps(d)


def _model_meta(record: Mapping[str, Any]) -> dict[str, Any]:
    """The first readable fold ``model.json`` of the run a case was predicted with ({} when none)."""
    run = Path(str(record.get("model", "")).split("#")[0])
    for meta in sorted(run.glob("fold_*/model.json")):
        try:
            return dict(json.loads(meta.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue
    return {}


def _scores(folder: RunFolder) -> list[tuple[Any, SlideScores | None, str]]:
    """Each slide with its layers (colour scales shared within a case) or the error reading them."""
    from ..core.errors import InputError

    by_case = {str(r["case_id"]): r for r in folder.cases}
    items: list[tuple[Any, SlideScores | None, str]] = []
    for case_id in dict.fromkeys(s.case_id for s in folder.slides):
        rec = by_case[case_id]
        fams, n = list(_model_meta(rec).get("families") or []), int(rec.get("n_patches") or 0) or 1
        case_items = []
        for src in (s for s in folder.slides if s.case_id == case_id):
            try:
                case_items.append((src, slide_layers(src.slide_id, src.scores, src.coords, src.tissue, n, fams), ""))
            except InputError as exc:
                case_items.append((src, None, str(exc)))
        share_scales([sc for _, sc, _ in case_items if sc is not None])
        items += case_items
    return items


def _copy_figures(folder: RunFolder, assets: Path) -> dict[str, dict[str, str]]:
    urls = {}
    for run in folder.runs:
        for name, src in run.figures.items():
            with atomic_path(assets / "runs" / run.name / f"{name}.png") as tmp:
                shutil.copyfile(src, tmp)
        urls[run.name] = figure_urls(run.name, list(run.figures))
    return urls


def _prune(report: Path, keep: set[str]) -> None:
    """Remove pages, data and pyramids of slides that are no longer in the report."""
    for html in (report / "slides").glob("*.html"):
        if html.stem not in keep:
            html.unlink(missing_ok=True)
    for parent in (report / "slides", report / "pyramids"):
        for d in parent.iterdir() if parent.is_dir() else []:
            if d.is_dir() and not d.name.startswith(".") and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)


def _folder_size(report: Path) -> tuple[int, int]:
    files = [p for p in report.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def build_report(out: Path | str, config: ReportConfig | None = None,
                 on_page: Callable[[SlidePage], None] | None = None) -> ReportResult:
    """Write ``<out>/report/`` from what ``out`` holds (see the module docstring) and return what was
    built. A slide whose page cannot be made is recorded (``status`` failed) and the others go on."""
    t0 = time.perf_counter()
    config = config or ReportConfig()
    out = Path(out)
    report = out / "report"
    with OutputLocks(out, "report").exclusive():
        report.mkdir(parents=True, exist_ok=True)
        _remove_temps(report)
        max_mpp = config.viewer_max_mpp or _previous_mpp(report) or DEFAULT_MAX_MPP
        folder = gather(out, config.slide_paths, config.slide_mpp)
        osd = vendor.install(report / "assets")
        figures = _copy_figures(folder, report / "assets")
        topk = _topk_text(folder)
        built = build_pages(report, _scores(folder), {str(r["case_id"]): r for r in folder.cases},
                            PyramidSettings(max_mpp=max_mpp), config.workers, topk, on_page)
        _prune(report, {p.slide_id for p in built if p.status == "done"})
        ctx = index_context(folder, built, figures, config.n_boot, max_mpp)
        nbytes, n_files = _folder_size(report)
        html = pages.render("index.html", vendor=osd, size=human_bytes(nbytes), n_files=n_files, **ctx)
        seconds = round(time.perf_counter() - t0, 3)
        write_json_atomic(report / "report.json", {
            "ghanet_version": __version__, "viewer_max_mpp": max_mpp, "openseadragon": osd, "seconds": seconds,
            "pages": [{"slide_id": p.slide_id, "case_id": p.case_id, "status": p.status, "message": p.message,
                       "href": p.href, "seconds": p.seconds, "pyramid_bytes": p.pyramid.bytes if p.pyramid else 0,
                       "pyramid_reused": bool(p.pyramid and p.pyramid.reused)} for p in built]})
        write_text_atomic(report / "index.html", html)
        nbytes, n_files = _folder_size(report)
    return ReportResult(dir=report, index=report / "index.html", pages=built, bytes=nbytes, n_files=n_files,
                        seconds=round(time.perf_counter() - t0, 3), viewer_max_mpp=max_mpp)


def _topk_text(folder: RunFolder) -> str:
    """The top-k share of the model the predictions came from (for the legend), e.g. ``20 %``."""
    topk = next(((_model_meta(r).get("model_config") or {}).get("topk") for r in folder.cases), None)
    return f"{float(topk) * 100:g} %" if topk else "k %"
