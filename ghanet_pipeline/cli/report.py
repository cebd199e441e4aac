"""``ghanet report``: the run's results and slide viewer as a folder of static HTML (``<out>/report/``).

Also called at the end of ``train`` and ``predict`` (unless ``--no-report``) through :func:`after_stage`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from .common import manifest_option, no_progress_option

VIEWER_MPP_HELP = ("Finest resolution of the slide viewer in um/px (pyramid depth): 1.0 shows nuclei at 1/16 "
                   "of a 40x scan's pixels; 0.25 = full resolution of a 40x scan. "
                   "Default: the previous report's value, else 1.0.")


def default_workers() -> int:
    """Tile-cutting processes: the machine's cores, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


@click.command("report")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default=Path("ghanet-out"), required=False)
@click.option("--viewer-max-mpp", type=click.FloatRange(min=0, min_open=True), default=None, metavar="UM_PER_PX",
              help=VIEWER_MPP_HELP)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes cutting pyramid tiles [default: the cores, at most 4].")
@manifest_option
@no_progress_option
def report(out: Path, viewer_max_mpp: float | None, workers: int | None, manifest: Path | None,
           no_progress: bool) -> None:
    """Write OUT/report/ (default OUT: ghanet-out): index.html with what was run, c-index per fold with 95 %
    intervals, Kaplan-Meier curves, gene reconstruction and a case table, plus one deep-zoom page per
    predicted slide with the model's attention and association drawn on the patch grid. Opens from disk
    with no server and no internet. --manifest (slide_id,path[,mpp]) locates slide files that the
    prediction records do not name. Exit 0 when every slide page was made, 1 when one failed."""
    from ..core.errors import ConfigError

    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder: give the output root of a run (the --out of train/predict)")
    slide_paths, slide_mpp = _manifest_slides(manifest)
    result = run_report(out, viewer_max_mpp, workers, slide_paths, slide_mpp, progress=not no_progress)
    sys.exit(0 if result is not None and result.ok else 1)


def _manifest_slides(manifest: Path | None) -> tuple[dict[str, Path], dict[str, float]]:
    if manifest is None:
        return {}, {}
    from ..wsi.inputs import collect_slides

    specs = collect_slides(manifest=manifest)
    return ({s.slide_id: Path(s.path) for s in specs},
            {s.slide_id: float(s.mpp) for s in specs if s.mpp is not None})


def run_report(out: Path, viewer_max_mpp: float | None = None, workers: int | None = None,
               slide_paths: dict[str, Path] | None = None, slide_mpp: dict[str, float] | None = None,
               progress: bool = True) -> Any:
    """Build the report, print one line per slide page and a summary; None when the build itself failed
    (the error is printed)."""
    from rich.console import Console

    from ..core.errors import GhanetError
    from ..report.build import ReportConfig, build_report

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    cfg = ReportConfig(viewer_max_mpp=viewer_max_mpp, workers=workers or default_workers(),
                       slide_paths=dict(slide_paths or {}), slide_mpp=dict(slide_mpp or {}))

    def on_page(p: Any) -> None:
        if progress or p.status != "done":
            style = {"done": "green", "failed": "red"}.get(p.status, "yellow")
            what = (f"{p.pyramid.n_tiles} tiles to {p.pyramid.finest_mpp:.3g} um/px"
                    + (" (reused)" if p.pyramid.reused else "")) if p.pyramid else p.message
            console.print(f"report: slide {p.slide_id} [{style}]{p.status}[/] {p.seconds:.1f} s - {what}",
                          soft_wrap=True)

    try:
        result = build_report(out, cfg, on_page=on_page)
    except GhanetError as exc:
        console.print(f"[red]report failed:[/] {exc}", soft_wrap=True)
        return None
    n_done = sum(p.status == "done" for p in result.pages)
    n_failed = sum(p.status == "failed" for p in result.pages)
    console.print(f"report: {result.index} ({result.size} in {result.n_files} files; {n_done} slide page(s) at "
                  f"{result.viewer_max_mpp:g} um/px; built in {result.seconds:.1f} s)"
                  + (f" [red]{n_failed} slide page(s) failed[/]" if n_failed else ""), soft_wrap=True)
    return result


def no_report_option(f: Any) -> Any:
    return click.option("--no-report", is_flag=True,
                        help="Do not (re)build <out>/report/ at the end (`ghanet report` builds it any time).")(f)


def after_stage(out: Path, no_report: bool, slide_paths: dict[str, Path] | None = None,
                slide_mpp: dict[str, float] | None = None) -> bool:
    """The report at the end of train/predict: True when built with every slide page (or skipped)."""
    if no_report:
        return True
    result = run_report(out, slide_paths=slide_paths, slide_mpp=slide_mpp, progress=False)
    return result is not None and result.ok
