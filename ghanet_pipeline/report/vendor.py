"""The viewer library shipped with ghanet: an unmodified OpenSeadragon release, and the report's own assets.

``report-files/openseadragon/`` holds files taken as they are from the npm package ``openseadragon`` (the
tarball made by ``npm pack openseadragon@<version>``); ``report-files/openseadragon.json`` records the
version, the tarball's hashes as the npm registry publishes them, which file came from where, and the
sha256 of every shipped file. :func:`install` checks those hashes before it copies the files into a
report, so a modified copy is never shipped. See docs/report.md for how to update the pin.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..core.errors import GhanetError
from ..core.files import atomic_path

#: the report's non-Python files (a folder name that is not a Python identifier: plain package data)
FILES = Path(__file__).parent / "report-files"
VENDOR_DIR = FILES / "openseadragon"
RECORD = FILES / "openseadragon.json"
STATIC_DIR = FILES / "static"


@lru_cache(maxsize=1)
def openseadragon_record() -> dict[str, Any]:
    """The pin record (name, version, licence, npm tarball hashes, ``files_sha256``)."""
    return json.loads(RECORD.read_text(encoding="utf-8"))


def check_vendored() -> dict[str, str]:
    """``{relative path: sha256}`` of the shipped OpenSeadragon files, after checking each against the
    record. Raises :class:`GhanetError` naming a missing, changed or unrecorded file."""
    want = openseadragon_record()["files_sha256"]
    have = {str(p.relative_to(VENDOR_DIR)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(VENDOR_DIR.rglob("*")) if p.is_file()}
    problems = [f"{name}: missing" for name in want if name not in have]
    problems += [f"{name}: not in the record" for name in have if name not in want]
    problems += [f"{name}: sha256 {have[name][:12]}... differs from the recorded {want[name][:12]}..."
                 for name in have if name in want and have[name] != want[name]]
    if problems:
        raise GhanetError(f"the bundled OpenSeadragon in {VENDOR_DIR} is not the pinned release "
                          f"({'; '.join(problems)}); reinstall ghanet")
    return have


def _copy_if_changed(src: Path, dest: Path) -> None:
    if dest.is_file() and dest.stat().st_size == src.stat().st_size and dest.read_bytes() == src.read_bytes():
        return
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def install(assets: Path) -> dict[str, Any]:
    """Copy OpenSeadragon (checked) to ``assets/openseadragon/`` and the report's CSS/JS to ``assets/``;
    return what was installed (the pin record without the per-file hashes)."""
    check_vendored()
    for src in sorted(VENDOR_DIR.rglob("*")):
        if src.is_file():
            _copy_if_changed(src, assets / "openseadragon" / src.relative_to(VENDOR_DIR))
    for src in sorted(STATIC_DIR.iterdir()):
        if src.is_file():
            _copy_if_changed(src, assets / src.name)
    rec = openseadragon_record()
    return {k: v for k, v in rec.items() if k not in ("files_sha256", "taken_from_tarball")}
