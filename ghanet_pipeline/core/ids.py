"""Ids used as file names: sanitising slide and case ids, and staying inside the output root."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from .errors import InputError

_UNSAFE = re.compile(r"[\\/\x00-\x1f\x7f:*?\"<>|]")


def sanitize_id(raw: str, what: str = "id") -> str:
    """Return ``raw`` made safe as a file name stem.

    Path separators, control characters and characters Windows refuses become ``_``; leading dots
    and surrounding spaces are removed. Raises :class:`InputError` when nothing usable remains
    (empty, ``.``/``..``).
    """
    text = unicodedata.normalize("NFC", str(raw)).strip()
    text = _UNSAFE.sub("_", text).lstrip(".").strip()
    if not text or set(text) <= {"_", "."}:
        raise InputError(f"{what} {raw!r} cannot be used as a file name (empty or only separators/dots); "
                         f"give it a name made of letters, digits, '-' or '_'")
    return text[:200]


def sanitize_ids(raw_ids: Iterable[str], what: str = "id") -> dict[str, str]:
    """Map each raw id to its sanitised form; raise when two different ids collide."""
    seen: dict[str, str] = {}
    out: dict[str, str] = {}
    for raw in raw_ids:
        safe = sanitize_id(raw, what)
        if safe in seen and seen[safe] != raw:
            raise InputError(f"{what}s {seen[safe]!r} and {raw!r} both become file name {safe!r}; "
                             f"rename one of them")
        seen[safe] = raw
        out[raw] = safe
    return out


def safe_child(root: Path | str, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result outside ``root``."""
    root_p = Path(root).resolve()
    path = root_p.joinpath(*parts).resolve()
    if path != root_p and root_p not in path.parents:
        raise InputError(f"refusing to write {path}: it is outside the output directory {root_p}")
    return path
