"""One way to time and summarise: :class:`Stats` (min / median / max over repeats), :func:`timed`, and
interleaved rounds (:func:`interleave`) so that load drift on a shared machine hits every side alike."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stats:
    """Repeated measurements of one quantity (seconds, patches/s, ...; the unit is the record's)."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("Stats needs at least one value")

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def n(self) -> int:
        return len(self.values)

    def rate(self, amount: float) -> Stats:
        """``amount / value`` per value: seconds -> items per second (the min rate is the slowest run)."""
        return Stats(tuple(amount / v for v in self.values))

    def to_json(self) -> dict[str, Any]:
        return {"min": self.min, "median": self.median, "max": self.max, "n": self.n, "values": list(self.values)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Stats:
        return cls(tuple(float(v) for v in obj["values"]))


def stats(values: Iterable[float]) -> Stats:
    """:class:`Stats` of the values (at least one)."""
    return Stats(tuple(float(v) for v in values))


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> tuple[Stats, Any]:
    """Wall seconds of ``repeats`` calls of ``fn`` (after ``warmup`` untimed calls), and the last call's result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return stats(times), out


def ratio(a: Stats, b: Stats) -> float:
    """Ratio of the medians ``a / b`` (of two sides measured in the same interleaved run)."""
    return a.median / b.median


@dataclass
class Rounds:
    """Results of :func:`interleave`: per name, one result per complete round."""

    results: dict[str, list[Any]] = field(default_factory=dict)
    complete: int = 0
    interrupted: bool = False

    def values(self, name: str, key: Callable[[Any], float] | None = None) -> Stats:
        """:class:`Stats` of ``name``'s results (or of ``key(result)`` for each)."""
        return stats(key(r) if key else r for r in self.results[name])


def interleave(names: Sequence[str], rounds: int, run_one: Callable[[str, int], Any], *, alternate: bool = False,
               log: Callable[[str], None] | None = None) -> Rounds:
    """Run ``run_one(name, round)`` for every name, round after round (``alternate``: every second round in
    reverse order). Ctrl-C keeps the complete rounds (re-raised when there are none)."""
    out = Rounds({n: [] for n in names})
    try:
        for r in range(rounds):
            order = list(names)[::-1] if alternate and r % 2 else list(names)
            for name in order:
                out.results[name].append(run_one(name, r))
                if log:
                    log(f"round {r + 1}/{rounds} {name} done")
            out.complete += 1
    except KeyboardInterrupt:
        if not out.complete:
            raise
        print(f"interrupted: keeping {out.complete} complete round(s)", file=sys.stderr)
        out.results = {n: v[:out.complete] for n, v in out.results.items()}
        out.interrupted = True
    return out
