"""Options shared by several commands (defined once, spelled the same everywhere) and rendering helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from ..core.runs import ItemResult
from ..protocols.presets import PRESETS, PROTOCOLS

F = Callable[..., Any]


def setup_logging(level: int) -> None:
    """Log through rich on a terminal, plain time-stamped lines otherwise (batch jobs)."""
    root = logging.getLogger("ghanet_pipeline")
    root.setLevel(level)
    if root.handlers:
        return
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.propagate = False


def out_option(f: F) -> F:
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("ghanet-out"),
                        show_default=True, help="Output root (layout: docs/architecture.md).")(f)


def manifest_option(f: F) -> F:
    return click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="CSV with slide_id,path[,case_id][,mpp]; paths relative to the manifest.")(f)


def slides_argument(f: F) -> F:
    """Positional slides + --recursive, --mpp, --case-id-from, --gdc-manifest, --slide-types."""
    f = click.option("--slide-types", default=None, metavar="DX[,TS,BS,MS]",
                     help="Keep only TCGA slides of these types (the barcode's slide field): DX = diagnostic "
                          "FFPE slides (what MCAT and the paper use), TS/BS/MS = frozen sections. Ids that are "
                          "not TCGA barcodes are kept. Default: every slide.")(f)
    f = click.option("--gdc-manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="GDC manifest (MANIFEST.txt of gdc-client) whose slide files are checked first (size, "
                          "MD5; remembered in <out>/cache/): a missing or damaged file fails, the others go on. "
                          "Default: MANIFEST.txt at the top of a given folder, when there is one.")(f)
    f = click.option("--case-id-from", type=click.Choice(["slide_id", "tcga"]), default=None,
                     help="Derive case_id from the slide id (tcga: first 12 characters).")(f)
    f = click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Level-0 um/px of every slide, overriding what its file says, except slides whose "
                          "manifest row has an mpp value.")(f)
    f = click.option("--recursive", is_flag=True, help="Look for slides (and DICOM WSI folders) in sub-folders of given directories.")(f)
    return click.argument("slides", nargs=-1, type=str)(f)


def default_of(options: type, name: str) -> Any:
    """The default of field ``name`` of an options dataclass of the library (``TrainConfig``,
    ``SegmentParams``, ...): the CLI shows and uses the library's defaults, never a copy."""
    fld = {f.name: f for f in dataclasses.fields(options)}[name]
    if fld.default is not dataclasses.MISSING:
        return fld.default
    return fld.default_factory()  # type: ignore[misc]


class RegistryChoice(click.Choice):
    """A choice among the names of a registry, read when first needed (``--help`` of the group and
    light commands then import no model code)."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names
        self._choices: tuple[str, ...] | None = None
        self.case_sensitive = True

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        if self._choices is None:
            self._choices = tuple(self._names())
        return self._choices


def model_names() -> list[str]:
    """Names in the survival-model registry."""
    from ..models import MODELS

    return MODELS.names()


def encoder_names() -> list[str]:
    """Names in the patch-encoder registry."""
    from ..features.encoders import ENCODERS

    return ENCODERS.names()


def protocol_option(f: F) -> F:
    return click.option("--protocol", type=click.Choice(list(PROTOCOLS)), default="ghanet",
                        show_default=True,
                        help="ghanet = our protocol; official = the authors' released training code (floor "
                             "top-k with ties, cohort bins, loader-drawn t-test groups, carry-over "
                             "accumulation, best epoch). Explicit options win; see docs/fidelity.md.")(f)


def preset_option(f: F) -> F:
    return click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                        help="The paper's per-cohort settings (top-k %, learning rate, no gene selection for "
                             "UCEC); explicit options win.")(f)


def device_option(f: F) -> F:
    return click.option("--device", default="auto", show_default=True,
                        help="auto | cpu | cuda | cuda:N")(f)


def engine_option(f: F) -> F:
    return click.option("--engine", type=click.Choice(["auto", "torch", "openvino"]), default="auto", show_default=True,
                        help="What runs the encoder: auto = OpenVINO on the CPU when installed (pip install "
                             "'ghanet[openvino]'), PyTorch on CUDA; an encoder that does not convert falls back to "
                             "PyTorch (logged). Converted models are cached in <out>/engines/ (or $GHANET_ENGINE_CACHE).")(f)


def int8_options(f: F) -> F:
    f = click.option("--int8-seed", type=int, default=0, show_default=True,
                     help="Seed of the int8 calibration sample.")(f)
    f = click.option("--int8-cohort", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     metavar="MANIFEST", help="The slides the int8 calibration sample is drawn from [default: all "
                     "slides given, before --shard]; the workflow passes its manifest so per-slide jobs share one model.")(f)
    return click.option("--int8-patches", type=click.IntRange(min=8), default=512, show_default=True,
                        help="int8 calibration sample: patches drawn (seeded, an equal share per slide) from the "
                             "cohort's patch grids; 64 of them are held out to check fidelity.")(f)


def batch_size_option(default: int) -> Callable[[F], F]:
    def deco(f: F) -> F:
        return click.option("--batch-size", type=click.IntRange(min=1), default=default, show_default=True,
                            help="Items per forward pass.")(f)
    return deco


def num_workers_option(default: int) -> Callable[[F], F]:
    def deco(f: F) -> F:
        return click.option("--num-workers", type=click.IntRange(min=0), default=default, show_default=True,
                            help="Reader processes (0 = in-process).")(f)
    return deco


def overwrite_option(f: F) -> F:
    return click.option("--overwrite", is_flag=True, help="Redo items whose valid output already exists.")(f)


def no_progress_option(f: F) -> F:
    return click.option("--no-progress", is_flag=True, help="Plain log lines instead of a progress bar.")(f)


def shard_option(f: F) -> F:
    return click.option("--shard", default=None, metavar="i/n",
                        help="Process only every n-th item starting at i (cluster array jobs).")(f)


class StepBars:
    """One progress bar at a time (e.g. one per fold): :meth:`start` closes the previous bar and opens the
    next; leaving the ``with`` block closes the last."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.bar: Progress | None = None
        self._stack: contextlib.ExitStack | None = None

    def start(self, total: int, description: str) -> Progress:
        self.close()
        self._stack = contextlib.ExitStack()
        self.bar = self._stack.enter_context(Progress(total, description, disable=self.disable))
        return self.bar

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self.bar = None, None

    def __enter__(self) -> StepBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Progress:
    """A rich progress bar on a terminal; plain periodic log lines otherwise or with --no-progress."""

    def __init__(self, total: int, description: str, disable: bool = False, every_s: float = 10.0) -> None:
        self.total, self.description, self.n = total, description, 0
        self.plain = disable or not sys.stderr.isatty()
        self.every_s, self._last = every_s, time.monotonic()
        self._bar = None
        self._stack = contextlib.ExitStack()
        self._log = logging.getLogger("ghanet_pipeline")

    def __enter__(self) -> Progress:
        if not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = self._stack.enter_context(RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), transient=False))
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int = 1, note: str = "") -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
        elif time.monotonic() - self._last >= self.every_s or self.n >= self.total:
            self._last = time.monotonic()
            self._log.info("%s: %d/%d %s", self.description, self.n, self.total, note)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def parse_folds(text: str | None) -> list[int] | None:
    """``--folds 0,2`` -> ``[0, 2]`` (sorted); None/empty = all folds. Duplicates, negatives and
    non-numbers are usage errors."""
    from ..core.errors import ConfigError

    if not text or not text.strip():
        return None
    try:
        folds = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ConfigError(f"--folds {text!r}: give fold numbers separated by commas, e.g. 0,1,2") from None
    if not folds or min(folds) < 0 or len(set(folds)) != len(folds):
        raise ConfigError(f"--folds {text!r}: give distinct fold numbers >= 0, e.g. 0,1,2")
    return sorted(folds)


def print_summary(title: str, results: Sequence[ItemResult], columns: Iterable[tuple[str, str]] = ()) -> None:
    """Rich table: item, status, the given metric columns ``(key, header)``, seconds, message."""
    from rich.console import Console
    from rich.table import Table

    cols = list(columns)
    table = Table(title=title)
    table.add_column("item")
    table.add_column("status")
    for _, header in cols:
        table.add_column(header, justify="right")
    table.add_column("s", justify="right")
    table.add_column("message", overflow="fold")
    styles = {"done": "green", "skipped": "cyan", "failed": "red", "no tissue": "yellow"}
    for r in results:
        vals = []
        for key, _ in cols:
            v = r.metrics.get(key, "")
            vals.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        table.add_row(r.item, f"[{styles.get(r.status, 'white')}]{r.status}[/]", *vals, f"{r.seconds:.1f}",
                      r.message)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    n_failed = sum(not r.ok for r in results)
    if n_failed:
        console.print(f"[red]{n_failed} of {len(results)} failed[/] (see the message column and <out>/logs/)")


def finish(results: Sequence[ItemResult]) -> None:
    """Exit 0 when every item succeeded, 1 when any failed."""
    from ..core.runs import exit_code

    sys.exit(exit_code(results))
