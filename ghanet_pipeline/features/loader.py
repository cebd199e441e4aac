"""The tile supply: a DataLoader over a slide's patch grid (one `Slide` per worker) yielding uint8 batches."""

from __future__ import annotations

import logging
import math
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import GhanetError

log = logging.getLogger(__name__)


class PatchBatches:
    """Map-style dataset: item ``i`` is the i-th block of ``batch_size`` patches as one array.

    Each process opens its own :class:`~ghanet_pipeline.wsi.slide.Slide` on first use (OpenSlide handles
    must not cross ``fork``). Returns ``(i, uint8 tensor (b, input_size, input_size, 3))``, or
    ``(i, message)`` when a patch cannot be read: the message names the patch's level-0 coordinates
    and is raised as :class:`SlideError` by the consumer (a worker traceback would hide it).
    """

    def __init__(self, path: Path, slide_id: str, mpp: float | None, plan: Any, coords: np.ndarray,
                 batch_size: int, input_size: int, raw_tiles: bool = True) -> None:
        self.path, self.slide_id, self.mpp, self.plan = Path(path), slide_id, mpp, plan
        self.raw_tiles = bool(raw_tiles)
        self.coords = np.ascontiguousarray(coords, dtype=np.int64)
        self.batch_size, self.input_size = int(batch_size), int(input_size)
        self._slide: Any = None

    def __len__(self) -> int:
        return math.ceil(len(self.coords) / self.batch_size)

    def _open(self) -> Any:
        if self._slide is None:
            from ..wsi.slide import Slide

            self._slide = Slide(self.path, mpp=self.mpp, slide_id=self.slide_id, raw_tiles=self.raw_tiles)
        return self._slide

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def __getstate__(self) -> dict[str, Any]:  # never ship an open handle to another process
        return {**self.__dict__, "_slide": None}

    def __getitem__(self, i: int) -> tuple[int, Any]:
        import torch

        block = self.coords[i * self.batch_size:(i + 1) * self.batch_size]
        out = np.empty((len(block), self.input_size, self.input_size, 3), dtype=np.uint8)
        x0 = y0 = -1
        try:
            slide = self._open()
            resize = self.input_size != self.plan.patch_size
            if resize:
                import cv2
            for j, (x0, y0) in enumerate(block.tolist()):
                patch = slide.read_patch(self.plan, x0, y0)
                if resize:
                    patch = cv2.resize(patch, (self.input_size, self.input_size), interpolation=cv2.INTER_AREA)
                out[j] = patch
        except Exception as exc:  # noqa: BLE001 - reported with the patch position, raised by the consumer
            where = f"the patch at level-0 (x={x0}, y={y0})" if x0 >= 0 else "the slide"
            detail = str(exc) if isinstance(exc, GhanetError) else f"{type(exc).__name__}: {exc}"
            return i, (f"slide {self.slide_id!r}: reading {where} failed: {detail}. The tile is unreadable "
                       f"(damaged file?); re-copy or re-export the slide")
        return i, torch.from_numpy(out)


def worker_init(_worker_id: int) -> None:
    """Reader processes decode with one thread each (parallelism comes from the number of workers).

    OpenCV's thread settings are deliberately not touched: ``cv2.setNumThreads`` in a forked child
    whose parent already used OpenCV's pool (segmentation, synthetic slides) deadlocks.
    """
    import torch

    torch.set_num_threads(1)


def reader_context(fork_safe: bool = True) -> Any:
    """``fork`` on Linux (workers start in milliseconds and share the loaded modules), else the default.

    Set explicitly: inside a process started with ``spawn`` (``--devices``) the default would be
    ``spawn`` too, and every slide would pay a fresh interpreter + torch import per reader.
    ``fork_safe=False`` (the OpenVINO engine runs in this process: its worker threads may hold locks at
    the moment of a fork, and a forked reader then waits on them forever, as measured): ``forkserver``,
    whose server is a fresh process that preloads this module and torch, so readers still start fast.
    """
    import multiprocessing as mp
    import sys

    if not sys.platform.startswith("linux"):
        return None
    if not fork_safe and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", __name__])
        return ctx
    if "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return None


class ThreadReader:
    """Iterates a :class:`PatchBatches` on one background thread, ``depth`` batches ahead.

    For in-process reading (no reader processes): the next batch is read and JPEG-decoded while the
    current one is encoded (OpenSlide, libjpeg-turbo and the numpy copies release the GIL). Items come
    out in order; an exception in the thread is re-raised in the consumer. ``close()`` stops the thread.
    """

    def __init__(self, data: PatchBatches, depth: int = 2, pin_memory: bool = False) -> None:
        self.data, self.pin_memory = data, bool(pin_memory)
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="ghanet-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for i in range(len(self.data)):
                item = self.data[i]
                if self.pin_memory and not isinstance(item[1], str):
                    item = (item[0], item[1].pin_memory())
                if not self._put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self) -> Any:
        for _ in range(len(self.data)):
            item = self._q.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
