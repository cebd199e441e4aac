"""ThreadReader: in order, errors reach the consumer, stopping early does not hang."""

from __future__ import annotations

import time

import pytest

from ghanet_pipeline.features.loader import ThreadReader


class Items:
    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.calls = n, fail_at, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.calls += 1
        if i == self.fail_at:
            raise OSError(f"boom at {i}")
        return i, f"batch{i}".encode()  # bytes: not a message string, not pinned


def test_items_come_in_order():
    reader = ThreadReader(Items(7), depth=2)
    assert [i for i, _ in reader] == list(range(7))
    reader.close()


def test_an_exception_in_the_thread_is_raised_in_the_consumer():
    reader = ThreadReader(Items(5, fail_at=3), depth=1)
    got = []
    with pytest.raises(OSError, match="boom at 3"):
        for i, _ in reader:
            got.append(i)
    assert got == [0, 1, 2]
    reader.close()


def test_close_before_the_end_stops_the_thread():
    items = Items(1000)
    reader = ThreadReader(items, depth=2)
    it = iter(reader)
    next(it)
    t0 = time.perf_counter()
    reader.close()
    assert time.perf_counter() - t0 < 5 and not reader._thread.is_alive()
    assert items.calls < 10  # it read ahead at most a few items, not the whole slide
