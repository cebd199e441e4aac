"""Where and how the encoder runs: device resolution, precision (autocast dtype, chosen from what the CPU
can do), reader-worker counts and glibc malloc tuning."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import ConfigError

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


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and instruction-set flags (lower case, as in ``/proc/cpuinfo``)."""

    model: str
    flags: frozenset[str]

    @property
    def amx_bf16(self) -> bool:
        """AMX tiles with bf16 matrix multiply (Intel Sapphire Rapids and later)."""
        return "amx_bf16" in self.flags and "amx_tile" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        """AVX512-BF16 dot products (Intel Cooper Lake / Sapphire Rapids, AMD Zen 4 / 5)."""
        return "avx512_bf16" in self.flags

    @property
    def has_bf16(self) -> bool:
        """Native bf16 arithmetic of either kind (else torch emulates bf16, several times slower than fp32)."""
        return self.amx_bf16 or self.avx512_bf16

    def describe(self) -> str:
        have = [n for n, ok in (("AMX-BF16", self.amx_bf16), ("AVX512-BF16", self.avx512_bf16)) if ok]
        return f"{self.model}: " + (", ".join(have) if have else "no bf16 instructions (no AMX-BF16, no AVX512-BF16)")


def parse_cpuinfo(text: str) -> CpuInfo:
    """:class:`CpuInfo` from the text of Linux ``/proc/cpuinfo`` (first processor's model and flags)."""
    model, flags = "", ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = val.strip()
        elif key in ("flags", "features") and not flags:
            flags = val
    return CpuInfo(model or platform.processor() or platform.machine() or "unknown CPU", frozenset(flags.lower().split()))


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process; Linux reads ``/proc/cpuinfo``, elsewhere the flags are
    empty, i.e. treated as "no bf16 instructions", which keeps fp32)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return parse_cpuinfo(fh.read())
    except OSError:
        return CpuInfo(platform.processor() or platform.machine() or "unknown CPU", frozenset())


def auto_cpu_precision(info: CpuInfo) -> tuple[str, str]:
    """What ``--precision auto`` means on this CPU, and why: ``("bf16" | "fp32", reason)``.

    Rule: bf16 only where the CPU has AMX-BF16. AVX512-BF16 without AMX (AMD Zen 4/5, Intel Cooper
    Lake) stays fp32: there bf16 convolutions run on vector dot-product units whose measured gain is far
    smaller than AMX's (see docs/extract.md), not enough to change the numbers by default; pass
    ``--precision bf16`` to use them.
    """
    if info.amx_bf16:
        return "bf16", "auto: the CPU has AMX-BF16"
    if info.avx512_bf16:
        return "fp32", "auto: the CPU has AVX512-BF16 but no AMX (bf16 only on request)"
    return "fp32", "auto: the CPU has no bf16 instructions"


def resolve_precision(precision: str, device: torch.device | str, info: CpuInfo | None = None) -> tuple[str, str]:
    """The one place that turns ``--precision`` into what runs: ``("fp32" | "bf16" | "fp16", reason)``.

    ``auto``: CUDA -> bf16 (fp16 where the GPU has no bf16); CPU -> :func:`auto_cpu_precision`.
    An explicit ``fp32`` / ``bf16`` is always honoured (``bf16`` on a CPU without bf16 instructions is
    allowed but warned about by the caller, see :func:`bf16_cpu_warning`); ``fp16`` on CPU is a
    :class:`ConfigError`.
    """
    dev_type = device if isinstance(device, str) else device.type
    dev_type = dev_type.split(":")[0]
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        if precision == "fp16" and dev_type != "cuda":
            raise ConfigError("--precision fp16 is for CUDA; on CPU use bf16 or fp32")
        return precision, "requested"
    if dev_type == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: CUDA with bf16"
        return "fp16", "auto: CUDA without bf16 support"
    return auto_cpu_precision(info or cpu_info())


#: ``train --precision`` choices: weights, gradients and Adam's state stay float32 in every case
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")

#: whether ``train --precision auto`` may choose bf16 autocast where the hardware has it (CUDA with bf16, CPUs
#: with AMX-BF16). False until the paired fp32-vs-bf16 comparison of docs/fidelity.md ("Training precision")
#: shows c-indices within the seed-to-seed spread and held-out risks ranked the same (Spearman >= 0.99) on
#: such hardware; until then auto trains in fp32 and says why.
TRAIN_BF16_AUTO = False


def resolve_train_precision(precision: str, device: torch.device | str, info: CpuInfo | None = None,
                            bf16_auto: bool | None = None) -> tuple[str, str]:
    """``train --precision`` -> ``("fp32" | "bf16", reason)``.

    ``auto``: bf16 autocast where :func:`resolve_precision` would choose bf16 (CUDA with bf16, CPUs with
    AMX-BF16) and :data:`TRAIN_BF16_AUTO` (or ``bf16_auto``) allows it; fp32 otherwise (never fp16: half
    precision would need loss scaling). An explicit value is honoured.
    """
    if precision not in TRAIN_PRECISIONS:
        raise ConfigError(f"train --precision must be one of {', '.join(TRAIN_PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision, "requested"
    chosen, why = resolve_precision("auto", device, info)
    if chosen != "bf16":
        return "fp32", why if chosen == "fp32" else "auto: no bf16 on this GPU (training does not use fp16)"
    if not (TRAIN_BF16_AUTO if bf16_auto is None else bf16_auto):
        return "fp32", (f"{why}, but bf16 training is not yet shown to match fp32 (docs/fidelity.md); "
                        f"--precision bf16 to use it")
    return "bf16", why


def bf16_cpu_warning(info: CpuInfo | None = None) -> str | None:
    """Why bf16 on this CPU is a bad idea (None when the CPU has bf16 instructions)."""
    info = info or cpu_info()
    if info.has_bf16:
        return None
    return (f"--precision bf16 on this CPU ({info.model}) is emulated: it has neither AMX-BF16 nor "
            f"AVX512-BF16, so bf16 runs several times slower than fp32; use --precision fp32 (or auto)")


def dtype_of(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision name (``fp32`` -> None: plain float32)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_workers(device: torch.device, n_devices: int = 1) -> int:
    """Reader processes per device.

    CUDA: all cores but one per GPU process (max 32): JPEG decoding is then the limit. CPU: the
    cores compute, so reading in the main process between batches (0 workers) costs least on small
    machines (a reader process competes with the encoder for the cores; docs/extract.md); from 8 cores on,
    one reader per 8 cores.
    """
    cores = cpu_cores()
    if device.type == "cpu":
        return 0 if cores < 8 else max(1, cores // 8)
    return int(max(1, min(32, cores // max(1, n_devices) - 1)))
