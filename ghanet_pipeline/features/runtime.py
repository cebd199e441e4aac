"""Where and how the encoder runs: device resolution, precision (autocast dtype), reader-worker counts and
glibc malloc tuning."""

from __future__ import annotations

import ctypes
import logging
import os
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def tune_malloc() -> bool:
    """Keep freed memory in the process instead of handing it back to the OS after every batch.

    Equivalent of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` (set by the Makefile) applied at
    run time with ``mallopt`` (glibc only; returns False elsewhere). Without it glibc mmaps and unmaps
    the large conv buffers of every forward pass, and the page faults cost CPU time (see README
    benchmarks). Memory use grows only to the peak of one batch.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    ok = libc.mallopt(m_mmap_max, 0) == 1
    ok &= libc.mallopt(m_trim_threshold, 1 << 34 if ctypes.sizeof(ctypes.c_long) >= 8 else 1 << 30) == 1
    return bool(ok)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (None = plain fp32)."""
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16":
        raise ConfigError("--precision fp16 is for CUDA; on CPU use bf16 or fp32")
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_workers(device: torch.device, n_devices: int = 1) -> int:
    """Reader processes per device.

    CUDA: all cores but one per GPU process (max 32): JPEG decoding is then the limit. CPU: the
    cores compute, so reading in the main process between batches (0 workers) costs least on small
    machines (measured on 2 cores: end-to-end 0.97-0.98x encoder-only with 0 workers, 0.85-0.91x with
    one reader process competing for the cores); from 8 cores on, one reader per 8 cores.
    """
    cores = cpu_cores()
    if device.type == "cpu":
        return 0 if cores < 8 else max(1, cores // 8)
    return int(max(1, min(32, cores // max(1, n_devices) - 1)))
