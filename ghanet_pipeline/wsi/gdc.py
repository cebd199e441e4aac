"""GDC downloads as ``gdc-client`` leaves them: the file layout, the manifest, and checking every file.

``gdc-client download -m MANIFEST.txt -d DIR`` writes ``DIR/<file uuid>/<file name>`` per file, with a
``logs/`` folder (``*.parcel`` state files) beside it; an ``annotations.txt`` may come along. The manifest
is a tab-separated table with columns ``id``, ``filename``, ``md5``, ``size`` (bytes) and ``state``.

:func:`verify_downloads` checks each listed slide file: present, of the listed size (a cheap stat), and of
the listed MD5 (read once, in parallel; the digest is remembered in a small cache keyed by the file's path,
size and modification time, so a rerun reads nothing). A file that fails is named with the reason and
the fix; it becomes a failed item of the stage while the other slides go on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ManifestError
from ..core.files import write_json_atomic

#: the columns of a GDC manifest that are checked (``state`` and others are ignored)
MANIFEST_COLUMNS = ("id", "filename", "md5", "size")
#: the name ``gdc-client`` users keep the manifest under, at the top of the download folder
MANIFEST_NAME = "MANIFEST.txt"
#: files and folders of a download that are never slides
AUX_NAMES = frozenset({"manifest.txt", "annotations.txt"})
AUX_DIRS = frozenset({"logs"})
_CHUNK = 4 << 20


@dataclass(frozen=True)
class GdcEntry:
    """One row of a GDC manifest: ``path`` is where gdc-client puts the file (``<root>/<id>/<filename>``)."""

    file_id: str
    filename: str
    md5: str
    size: int
    path: Path
    row: int


def is_download_aux(path: Path) -> bool:
    """True for what a gdc-client download holds besides data files (logs/, *.parcel, MANIFEST.txt,
    annotations.txt) and for hidden files (``._x.svs`` of macOS copies)."""
    return (path.name.lower() in AUX_NAMES or path.suffix.lower() == ".parcel" or path.name.startswith(".")
            or any(p.lower() in AUX_DIRS for p in path.parts[:-1]))


def looks_like_gdc_manifest(path: Path) -> bool:
    """Whether ``path`` is a file whose first line is a GDC manifest header."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
    except OSError:
        return False
    return all(c in header for c in MANIFEST_COLUMNS)


def find_gdc_manifest(inputs: Iterable[str | Path]) -> Path | None:
    """The ``MANIFEST.txt`` at the top of a given download folder (the first one found), else None."""
    for item in inputs:
        cand = Path(item) / MANIFEST_NAME
        if Path(item).is_dir() and cand.is_file() and looks_like_gdc_manifest(cand):
            return cand
    return None


def read_gdc_manifest(path: Path | str) -> list[GdcEntry]:
    """Rows of a GDC manifest; files are expected at ``<manifest folder>/<id>/<filename>``.

    Missing columns, an empty id or file name, a size that is not a whole number of bytes or an MD5 that is
    not 32 hex digits raise :class:`ManifestError` naming the row and column.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"--gdc-manifest {path}: file not found")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        lines = [ln.rstrip("\r\n") for ln in fh]
    header = lines[0].split("\t") if lines else []
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise ManifestError(f"{path}: not a GDC manifest (no column(s) {', '.join(missing)}); expected the "
                            f"tab-separated file from the GDC portal's 'Manifest' button (id, filename, md5, size, state)")
    col = {c: header.index(c) for c in MANIFEST_COLUMNS}
    entries = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        get = dict.fromkeys(MANIFEST_COLUMNS, "") | {c: cells[j].strip() for c, j in col.items() if j < len(cells)}
        for c in ("id", "filename"):
            if not get[c] or "/" in get[c] or "\\" in get[c] or get[c] in (".", ".."):
                raise ManifestError(f"{path}, row {i}, column {c}: {get[c]!r} is not a file id / name")
        if not get["size"].isdigit():
            raise ManifestError(f"{path}, row {i}, column size: {get['size']!r} is not a size in bytes")
        md5 = get["md5"].lower()
        if len(md5) != 32 or any(ch not in "0123456789abcdef" for ch in md5):
            raise ManifestError(f"{path}, row {i}, column md5: {get['md5']!r} is not an MD5 digest (32 hex digits)")
        entries.append(GdcEntry(get["id"], get["filename"], md5, int(get["size"]),
                                path.parent / get["id"] / get["filename"], i))
    return entries


def file_md5(path: Path) -> str:
    """MD5 (hex) of a file, read in 4 MiB blocks (hashlib releases the GIL: threads read in parallel)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _load_cache(cache: Path | None) -> dict[str, dict]:
    if cache is None:
        return {}
    try:
        data = json.loads(cache.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def verify_downloads(entries: Iterable[GdcEntry], cache: Path | None = None,
                     workers: int | None = None) -> dict[Path, str]:
    """Check each entry's file; returns file path -> problem (only the files that fail).

    Size first (a stat); MD5 only for files of the right size, computed in ``workers`` threads (default
    4) and remembered in ``cache`` (JSON: path -> size, mtime_ns, md5; merged with what other processes
    wrote, replaced atomically).
    """
    entries = list(entries)
    problems: dict[Path, str] = {}
    known = _load_cache(cache)
    todo: list[tuple[GdcEntry, os.stat_result]] = []
    fix = "download it again (gdc-client download -m MANIFEST.txt resumes and replaces it)"
    for e in entries:
        try:
            st = e.path.stat()
        except OSError:
            problems[e.path] = (f"GDC download {e.path} is missing (manifest row {e.row}, file id {e.file_id}); "
                                f"{fix}")
            continue
        if st.st_size != e.size:
            problems[e.path] = (f"GDC download {e.path} is truncated or incomplete: {st.st_size:,} of "
                                f"{e.size:,} bytes (manifest row {e.row}); {fix}")
            continue
        rec = known.get(str(e.path.resolve()))
        if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            if rec.get("md5") != e.md5:
                problems[e.path] = _md5_problem(e, str(rec.get("md5")), fix)
            continue
        todo.append((e, st))
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers or 4)) as pool:
            digests = list(pool.map(lambda t: _safe_md5(t[0].path), todo))
        fresh = {}
        for (e, st), digest in zip(todo, digests, strict=True):
            if digest is None:
                problems[e.path] = f"GDC download {e.path} cannot be read (manifest row {e.row}); {fix}"
                continue
            fresh[str(e.path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": digest}
            if digest != e.md5:
                problems[e.path] = _md5_problem(e, digest, fix)
        if cache is not None and fresh:
            _save_cache(cache, fresh)
    return problems


def _md5_problem(e: GdcEntry, got: str, fix: str) -> str:
    return (f"GDC download {e.path} is damaged: its MD5 {got} differs from the manifest's {e.md5} (row {e.row}, "
            f"column md5); {fix}")


def _safe_md5(path: Path) -> str | None:
    try:
        return file_md5(path)
    except OSError:
        return None


def _save_cache(cache: Path, fresh: dict[str, dict]) -> None:
    merged = _load_cache(cache) | fresh  # another process may have added entries meanwhile
    try:
        write_json_atomic(cache, merged)
    except OSError:
        pass  # a cache that cannot be written costs a re-read next time, nothing else
