"""One registry mechanism for things users add more of (patch encoders, survival models).

A :class:`Registry` maps a name to an entry (an encoder spec, a model builder). It reads like a
read-only mapping (``name in reg``, ``reg[name]``, ``sorted(reg)``); entries are added with
:meth:`Registry.register` (usable as a decorator) and looked up with :meth:`Registry.lookup`, whose error
names the known entries. :meth:`Registry.restoring` undoes registrations made inside it (tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry; ``kind`` ("encoder", "model") names the entries in messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> T | Callable[[T], T]:
        """Add ``entry`` under ``name``; without ``entry``, a decorator that adds what it decorates.

        A name can be registered once (registering the same object again is allowed)."""
        if entry is None:
            return lambda e: self._add(name, e)
        return self._add(name, entry)

    def _add(self, name: str, entry: T) -> T:
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def lookup(self, name: str) -> T:
        """The entry of ``name``; :class:`ConfigError` listing the known names when there is none."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    @contextlib.contextmanager
    def restoring(self) -> Iterator[Registry[T]]:
        """Undo, on exit, every registration made inside the block."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(saved)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
