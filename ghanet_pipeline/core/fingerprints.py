"""Provenance fingerprints: what a derived output was made from, recorded and compared on every rerun.

A *fingerprint* is a dict of named components (``features``, ``genomics``, ``cases``, ``options``, ...).
Each :class:`Component` has a short digest (16 hex characters of a SHA-256), a one-line summary for
people and, optionally, per-item digests (slide id -> bag hash, ``fold_0/targets`` -> hash) so that a
difference can be named item by item. The whole fingerprint has one digest too (:func:`digest_of`).

Use::

    fp = fingerprint(features=component_from_items(...), options=component_from_mapping(...))
    record["fingerprint"] = to_json(fp)                  # stored next to the output (config.json, ...)
    ...
    check_same(from_json(old["fingerprint"]), fp, what="run r", fix="use --run-name NEW or --overwrite")

``check_same`` raises :class:`~ghanet_pipeline.core.errors.MismatchError` whose message names every component
that changed and, for item components, how many items changed/appeared/disappeared with examples.

Bag content hashes live in :mod:`ghanet_pipeline.features.fingerprints`, a model's fingerprint in
:mod:`ghanet_pipeline.models.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MismatchError
from .files import file_sha256

#: characters of hex kept for component and item digests
DIGEST_CHARS = 16
_EXAMPLES = 3


@dataclass(frozen=True)
class Component:
    """One input of an output: ``digest`` (16 hex), ``summary`` (for people), ``items`` (name -> digest)."""

    digest: str
    summary: str
    items: Mapping[str, str] | None = field(default=None, compare=False)


Fingerprint = dict[str, Component]


def digest_of(obj: Any) -> str:
    """16-hex SHA-256 of ``obj`` as canonical JSON (sorted keys; numpy values as lists)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_CHARS]


def _plain(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Component):
        return {"digest": obj.digest}
    raise TypeError(f"not hashable as JSON: {type(obj).__name__}")


def component_from_items(items: Mapping[str, str], summary: str) -> Component:
    """A component whose digest covers every (name, item digest) pair; differences are named per item."""
    items = {str(k): str(v) for k, v in sorted(items.items())}
    return Component(digest=digest_of(items), summary=summary, items=items)


def component_from_mapping(values: Mapping[str, Any], summary: str | None = None) -> Component:
    """A component over plain values (options): each value becomes an item shown as its JSON text."""
    items = {str(k): json.dumps(v, sort_keys=True, default=_plain) for k, v in sorted(values.items())}
    if summary is None:
        summary = ", ".join(f"{k} {v}" for k, v in items.items())
    return Component(digest=digest_of(items), summary=summary, items=items)


def fingerprint(**components: Component) -> Fingerprint:
    """Build a fingerprint from named components (names are kept in the given order)."""
    return dict(components)


def fingerprint_digest(fp: Mapping[str, Component]) -> str:
    """One 16-hex digest for the whole fingerprint (component names and digests)."""
    return digest_of({name: c.digest for name, c in fp.items()})


def to_json(fp: Mapping[str, Component]) -> dict[str, Any]:
    """Fingerprint -> JSON-able dict ``{name: {"digest", "summary", "items"?}}``."""
    out: dict[str, Any] = {}
    for name, c in fp.items():
        rec: dict[str, Any] = {"digest": c.digest, "summary": c.summary}
        if c.items is not None:
            rec["items"] = dict(c.items)
        out[name] = rec
    return out


def from_json(data: Mapping[str, Any] | None) -> Fingerprint:
    """Inverse of :func:`to_json` (an unreadable entry raises :class:`MismatchError`)."""
    fp: Fingerprint = {}
    for name, rec in (data or {}).items():
        if not isinstance(rec, Mapping) or "digest" not in rec:
            raise MismatchError(f"recorded fingerprint component {name!r} is malformed ({rec!r}); the output "
                                f"was edited or written by another tool")
        items = rec.get("items")
        fp[str(name)] = Component(str(rec["digest"]), str(rec.get("summary", "")),
                                  None if items is None else {str(k): str(v) for k, v in items.items()})
    return fp


def describe_differences(old: Mapping[str, Component], new: Mapping[str, Component]) -> list[str]:
    """One line per component that differs (added, removed or changed), naming items where known."""
    lines: list[str] = []
    for name in list(old) + [n for n in new if n not in old]:
        a, b = old.get(name), new.get(name)
        if a is None:
            lines.append(f"{name}: not recorded before (now {b.summary})")  # type: ignore[union-attr]
        elif b is None:
            lines.append(f"{name}: recorded before ({a.summary}) but not given now")
        elif a.digest != b.digest:
            lines.append(f"{name}: {_item_diff(a, b)}")
    return lines


def _item_diff(a: Component, b: Component) -> str:
    if a.items is None or b.items is None:
        return f"{a.summary} -> {b.summary} (digest {a.digest} -> {b.digest})"
    changed = [k for k in a.items if k in b.items and a.items[k] != b.items[k]]
    removed = [k for k in a.items if k not in b.items]
    added = [k for k in b.items if k not in a.items]
    parts = []
    if changed:
        ex = "; ".join(f"{k}: {_short(a.items[k])} -> {_short(b.items[k])}" for k in changed[:_EXAMPLES])
        parts.append(f"{len(changed)} changed ({ex}{'; ...' if len(changed) > _EXAMPLES else ''})")
    if removed:
        parts.append(f"{len(removed)} no longer present ({', '.join(removed[:_EXAMPLES])}"
                     f"{', ...' if len(removed) > _EXAMPLES else ''})")
    if added:
        parts.append(f"{len(added)} new ({', '.join(added[:_EXAMPLES])}{', ...' if len(added) > _EXAMPLES else ''})")
    return ", ".join(parts) or f"digest {a.digest} -> {b.digest}"


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def check_same(old: Mapping[str, Component], new: Mapping[str, Component], what: str, fix: str,
               ignore: Iterable[str] = ()) -> None:
    """Raise :class:`MismatchError` when ``old`` and ``new`` differ (components in ``ignore`` skipped).

    ``what`` names the output (``run folder out/train/r``), ``fix`` says what to do instead.
    """
    skip = set(ignore)
    lines = describe_differences({k: v for k, v in old.items() if k not in skip},
                                 {k: v for k, v in new.items() if k not in skip})
    if lines:
        raise MismatchError(f"{what} was made from other inputs or parameters than now:\n  - " + "\n  - ".join(lines)
                            + f"\nNothing was changed. {fix}")


# --------------------------------------------------------------------------- bags


def file_component(paths: Mapping[str, Path | str], summary: str) -> Component:
    """A component over files' bytes (name -> 16-hex file SHA-256); missing files are items ``missing``."""
    items = {name: (file_sha256(p)[:DIGEST_CHARS] if Path(p).is_file() else "missing") for name, p in paths.items()}
    return component_from_items(items, summary)


# --------------------------------------------------------------------------- models

