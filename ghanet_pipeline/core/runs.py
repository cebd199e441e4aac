"""Per-item results of a batch stage and the run record written to ``<out>/logs/``."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .. import __version__
from .errors import GhanetError
from .files import remove_stale_temps, write_json_atomic

#: statuses that count as success for the exit code
OK_STATUSES = ("done", "skipped", "no tissue")

T = TypeVar("T")


@dataclass
class ItemResult:
    """Outcome of one item (slide, case, fold) of a batch stage.

    ``status`` is one of ``done``, ``skipped`` (valid output already there), ``no tissue``
    (outputs written, nothing to do), ``failed`` (``message`` says why). ``metrics`` holds the
    numbers shown in the summary table (e.g. ``patches``, ``tissue_mm2``).
    """

    item: str
    status: str
    seconds: float = 0.0
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES


def run_items(items: Iterable[T], name_of: Callable[[T], str], work: Callable[[T], ItemResult],
              on_done: Callable[[ItemResult], None] | None = None) -> list[ItemResult]:
    """Run ``work`` on each item; an expected error (GhanetError, OSError, ...) fails only that item.

    ``KeyboardInterrupt`` still stops the batch. ``on_done`` is called after each item (progress). An item
    with a ``problem`` (e.g. a GDC download that failed its check, ``wsi.gather``) fails with it, unrun.
    """
    results: list[ItemResult] = []
    for item in items:
        t0 = time.perf_counter()
        try:
            problem = getattr(item, "problem", "")
            res = ItemResult(item=name_of(item), status="failed", message=problem) if problem else work(item)
        except (GhanetError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            msg = str(exc) if isinstance(exc, GhanetError) else f"{type(exc).__name__}: {exc}"
            res = ItemResult(item=name_of(item), status="failed", message=msg)
        res.seconds = res.seconds or round(time.perf_counter() - t0, 3)
        results.append(res)
        if on_done is not None:
            on_done(res)
    return results


def exit_code(results: Iterable[ItemResult]) -> int:
    """0 when every item succeeded, 1 when any failed."""
    return 0 if all(r.ok for r in results) else 1


def versions() -> dict[str, str]:
    """Versions of python, ghanet and the main libraries that are importable (no heavy imports forced)."""
    out = {"python": sys.version.split()[0], "ghanet": __version__, "platform": platform.platform()}
    for mod in ("numpy", "h5py", "openslide", "torch", "torchvision", "pandas", "pydeseq2", "lifelines"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = str(getattr(m, "__version__", "?"))
    return out


def write_run_log(out: Path | str, stage: str, config: dict[str, Any], results: list[ItemResult],
                  started: float | None = None) -> Path:
    """Write ``<out>/logs/<stage>-<timestamp>.json`` (config, versions, per-item status, timings)."""
    now = _dt.datetime.now()
    stamp = now.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    path = Path(out) / "logs" / f"{stage}-{stamp}.json"
    record = {
        "stage": stage,
        "finished": now.isoformat(timespec="seconds"),
        "seconds": None if started is None else round(time.time() - started, 3),
        "config": config,
        "versions": versions(),
        "items": [asdict(r) for r in results],
        "n_failed": sum(not r.ok for r in results),
    }
    remove_stale_temps(path.parent)  # run logs half-written by killed runs (never a live writer's)
    return write_json_atomic(path, record)
