"""The on-disk cache of converted (and quantized) encoders: one folder per key, written atomically,
shared by every process that uses the same output root.

Layout: ``<root>/<key>/`` holds the engine's files (OpenVINO: ``model.xml`` + ``model.bin``) and
``record.json`` (what the model was made from, its id). ``<root>`` is ``<out>/engines`` (inside the
output root the user chose), or the folder named by the environment variable ``GHANET_ENGINE_CACHE``
(a cache shared by several output roots, e.g. one per machine; the user sets it, so it is also a
place the user chose).

A folder is built under a temporary name beside its final one and renamed when complete, so a reader
never sees half a model, and a killed build leaves only a temporary folder that the next build
removes. A per-key file lock (``<root>/.locks/<key>.lock``) makes concurrent processes (shards,
``--devices``, two terminals) build a key once: the others wait, then reuse it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.files import fsync_dir, write_json_atomic
from ...core.ids import safe_child, sanitize_id

log = logging.getLogger(__name__)

#: environment variable naming a cache folder used instead of ``<out>/engines``
CACHE_ENV = "GHANET_ENGINE_CACHE"
RECORD = "record.json"


def cache_root(out: Path | str) -> Path:
    """``$GHANET_ENGINE_CACHE`` when set, else ``<out>/engines``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else safe_child(out, "engines")


@dataclass(frozen=True)
class CacheEntry:
    """A complete cache folder: ``path``, its ``record`` and whether this call built it."""

    path: Path
    record: dict[str, Any]
    built: bool


def read_entry(root: Path, key: str) -> CacheEntry | None:
    """The complete entry ``key`` under ``root`` (None when absent or unreadable)."""
    folder = Path(root) / sanitize_id(key, "engine cache key")
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return CacheEntry(folder, record, False)


def get_or_build(root: Path | str, key: str, build: Callable[[Path], dict[str, Any]]) -> CacheEntry:
    """The entry ``key``; when missing, ``build(tmp_folder)`` writes the files into ``tmp_folder`` and
    returns the record, and the folder is renamed into place (see module doc)."""
    from filelock import FileLock

    from ...core.locks import acquire

    root = Path(root)
    key = sanitize_id(key, "engine cache key")
    found = read_entry(root, key)
    if found is not None:
        return found
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / ".locks" / f"{key}.lock"), thread_local=False)
    acquire(lock, f"the engine cache entry {key}")
    try:
        found = read_entry(root, key)  # another process built it while we waited
        if found is not None:
            return found
        _remove_leftovers(root, key)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
        try:
            record = build(tmp)
            write_json_atomic(tmp / RECORD, record)
            final = root / key
            if final.exists():  # an incomplete folder without a record (e.g. copied by hand): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("engine cache: built %s", final)
        return CacheEntry(final, record, True)
    finally:
        lock.release()


def _remove_leftovers(root: Path, key: str) -> None:
    """Temporary folders of killed builds of ``key`` (we hold its lock, so none is live)."""
    for tmp in root.glob(f".{key}.*.tmp"):
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
