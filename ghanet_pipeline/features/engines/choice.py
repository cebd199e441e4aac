"""Which engine runs the frozen encoder, in which precision: the one place that turns ``--engine`` and
``--precision`` into what runs, with the reason (logged and recorded).

Engines: ``torch`` (the PyTorch module, :class:`..fastpath.Runner`; CPU and CUDA; fp32, bf16, fp16)
and ``openvino`` (the converted model, :mod:`.openvino_runner`; CPU; fp32, int8, and bf16 on CPUs with
bf16 instructions, AMX-BF16 or AVX512-BF16: OpenVINO has no bf16 emulation). ``auto``: OpenVINO on CPU
when it is installed (the optional extra ``ghanet[openvino]``), PyTorch on CUDA, wherever OpenVINO is
missing, and for bf16 on a CPU without bf16 instructions (emulated by PyTorch, slow) and fp16.

Precision ``int8`` (post-training quantization, :mod:`.int8`) needs OpenVINO and NNCF. ``auto``
keeps today's rule for the float precisions (``runtime.resolve_precision``: bf16 on CUDA and on CPUs
with AMX-BF16, else fp32) and chooses int8 on CPU only where :data:`INT8_AUTO` is True (the downstream
check in docs/benchmarks.md held) *and* the cohort's own quantized model passes the fidelity gate of
:mod:`.int8` on held-out patches; the log line says which.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
#: may ``--precision auto`` choose int8 on CPU? Set from the downstream check (docs/benchmarks.md,
#: "int8 vs fp32 bags downstream"): paired c-index difference within the seed-to-seed spread and
#: Spearman of held-out risks >= 0.99.
INT8_AUTO = False
INSTALL_HINT = "pip install 'ghanet[openvino]' (OpenVINO and NNCF; make setup installs them)"


@functools.lru_cache(maxsize=2)
def missing(with_nncf: bool = False) -> str | None:
    """Why the OpenVINO engine (``with_nncf``: and int8 quantization) cannot run here; None when it can."""
    try:
        import openvino  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: not usable
        return f"OpenVINO is not installed ({type(exc).__name__}: {exc})"
    if with_nncf:  # found, not imported: importing NNCF takes ~0.4 s, and a cached int8 model does not need it
        import importlib.util

        if importlib.util.find_spec("nncf") is None:
            return "NNCF is not installed"
    return None


@dataclass(frozen=True)
class EngineChoice:
    """What runs: ``engine`` (torch | openvino), ``precision`` (fp32 | bf16 | fp16 | int8, or ``auto-int8``
    = int8 if the cohort's quantized model passes the fidelity gate, else ``fallback``), and why."""

    engine: str
    precision: str
    reason: str
    fallback: str = "fp32"  # the float precision used when auto-int8 does not pass

    @property
    def int8(self) -> bool:
        return self.precision in ("int8", "auto-int8")


def resolve_engine(engine: str, precision: str, device: torch.device | str, int8_auto: bool = True) -> EngineChoice:
    """``--engine`` x ``--precision`` on ``device`` -> :class:`EngineChoice` (usage errors as
    :class:`ConfigError`: int8 with torch, openvino on CUDA or not installed). ``int8_auto``: may ``auto``
    choose int8 at all (predict passes False: it follows the precision of its training bags)."""
    from ...env.runtime import resolve_precision

    dev = (device if isinstance(device, str) else device.type).split(":")[0]
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if engine == "openvino" and dev != "cpu":
        raise ConfigError(f"--engine openvino runs on the CPU; use --device cpu or --engine torch on {dev}")
    if precision == "int8":
        if engine == "torch" or dev != "cpu":
            raise ConfigError("--precision int8 runs on the CPU with --engine openvino (or auto); "
                              "on CUDA use bf16/fp16, with torch use fp32/bf16")
        why = missing(with_nncf=True)
        if why:
            raise ConfigError(f"--precision int8 needs OpenVINO and NNCF: {why}; {INSTALL_HINT}")
        return EngineChoice("openvino", "int8", "requested")
    if engine == "openvino":
        why = missing()
        if why:
            raise ConfigError(f"--engine openvino: {why}; {INSTALL_HINT}")
        if precision == "fp16":
            raise ConfigError("--engine openvino runs fp32, bf16 or int8 on the CPU, not fp16; use --engine torch")
        if precision == "bf16" and not native_bf16():
            raise ConfigError("--engine openvino runs bf16 only on CPUs with bf16 instructions (AMX-BF16 or "
                              "AVX512-BF16), and this CPU has neither; use fp32 (or --engine torch, which emulates "
                              "bf16 slowly)")
    float_precision, float_why = resolve_precision("fp32" if precision == "int8" else precision, dev)
    if engine == "torch" or dev != "cpu":
        return EngineChoice("torch", float_precision, _why(engine, precision, float_why, "torch"))
    why = missing()
    if why:  # engine auto on CPU without OpenVINO
        return EngineChoice("torch", float_precision, f"auto: {why}; PyTorch runs the encoder")
    if float_precision == "fp16" or (float_precision == "bf16" and not native_bf16()):  # only PyTorch runs these
        return EngineChoice("torch", float_precision, _why(engine, precision, float_why, "torch"))
    # auto on a CPU with AMX stays bf16 even where int8 may be chosen (OpenVINO's bf16 ran as fast as its
    # accuracy-controlled int8 there, 1.04-1.11x, with no quantization to make; docs/benchmarks.md)
    if precision == "auto" and float_precision == "fp32" and int8_auto and INT8_AUTO and missing(with_nncf=True) is None:
        return EngineChoice("openvino", "auto-int8", "auto: int8 passed the downstream check (docs/benchmarks.md); "
                            "used if this cohort's quantized encoder passes the fidelity gate", "fp32")
    return EngineChoice("openvino", float_precision, _why(engine, precision, float_why, "openvino"))


def native_bf16() -> bool:
    """Does this CPU compute bf16 in hardware (AMX-BF16 or AVX512-BF16)? OpenVINO runs bf16 only there."""
    from ...env.runtime import cpu_info

    return cpu_info().has_bf16


def _why(engine: str, precision: str, float_why: str, chosen: str) -> str:
    parts = [float_why if precision == "auto" else "precision requested"]
    parts.append(f"engine {chosen}" + (" (auto)" if engine == "auto" else ""))
    if precision == "auto" and chosen == "openvino" and not INT8_AUTO:
        parts.append("int8 only on request (--precision int8)")
    return "; ".join(parts)
