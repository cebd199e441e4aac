"""Precision resolution from the CPU's flags (faked) and the bf16 warning (env/runtime.py)."""

from __future__ import annotations

import pytest

from ghanet_pipeline.core.errors import ConfigError
from ghanet_pipeline.env import runtime
from ghanet_pipeline.env.runtime import CpuInfo, parse_cpuinfo, resolve_precision

AMX = CpuInfo("Fake Xeon (Sapphire Rapids)", frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}))
ZEN4 = CpuInfo("Fake EPYC (Zen 4)", frozenset({"avx512f", "avx512_bf16"}))
OLD = CpuInfo("Fake EPYC (Zen 2)", frozenset({"avx2", "fma"}))

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: other
flags\t\t: fpu
"""


def test_parse_cpuinfo_reads_model_and_flags_of_the_first_processor():
    info = parse_cpuinfo(CPUINFO)
    assert info.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert info.amx_bf16 and info.avx512_bf16 and info.has_bf16
    assert "AMX-BF16" in info.describe() and "AVX512-BF16" in info.describe()
    none = parse_cpuinfo("model name : Some CPU\nflags : fpu avx2\n")
    assert not none.has_bf16 and "no bf16 instructions" in none.describe()
    # amx_bf16 without amx_tile (a kernel that does not enable the tiles) is not AMX
    assert not parse_cpuinfo("flags : amx_bf16\n").amx_bf16


@pytest.mark.parametrize(("info", "expected"), [(AMX, "bf16"), (ZEN4, "fp32"), (OLD, "fp32")])
def test_auto_on_cpu_follows_the_flags(info, expected):
    name, reason = resolve_precision("auto", "cpu", info)
    assert name == expected and reason.startswith("auto")
    assert ("AMX" in reason) == (info is AMX or info is ZEN4)


@pytest.mark.parametrize("info", [AMX, ZEN4, OLD])
def test_explicit_precision_is_always_honoured_on_cpu(info):
    assert resolve_precision("fp32", "cpu", info) == ("fp32", "requested")
    assert resolve_precision("bf16", "cpu", info) == ("bf16", "requested")
    with pytest.raises(ConfigError, match="fp16 is for CUDA"):
        resolve_precision("fp16", "cpu", info)
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_precision("fp8", "cpu", info)


def test_bf16_warning_only_without_bf16_instructions():
    assert runtime.bf16_cpu_warning(AMX) is None and runtime.bf16_cpu_warning(ZEN4) is None
    msg = runtime.bf16_cpu_warning(OLD)
    assert msg and "emulated" in msg and "--precision fp32" in msg and OLD.model in msg


def test_autocast_dtype_uses_the_same_rule(monkeypatch):
    import torch

    monkeypatch.setattr(runtime, "cpu_info", lambda: AMX)
    assert runtime.dtype_of(runtime.resolve_precision("auto", torch.device("cpu"))[0]) is torch.bfloat16
    assert runtime.dtype_of(runtime.resolve_precision("fp32", torch.device("cpu"))[0]) is None
    monkeypatch.setattr(runtime, "cpu_info", lambda: OLD)
    assert runtime.dtype_of(runtime.resolve_precision("auto", torch.device("cpu"))[0]) is None


# ---- train --precision ---------------------------------------------------------------------------------

@pytest.mark.parametrize("info", [AMX, ZEN4, OLD])
def test_train_auto_is_fp32_until_bf16_training_is_shown_faithful(info):
    """auto trains in fp32 on every CPU while TRAIN_BF16_AUTO is False, and says why on an AMX CPU."""
    assert runtime.TRAIN_BF16_AUTO is False
    name, reason = runtime.resolve_train_precision("auto", "cpu", info)
    assert name == "fp32" and reason.startswith("auto")
    assert ("not yet shown" in reason) == (info is AMX)


def test_train_auto_with_the_gate_open_follows_the_extraction_rule():
    """With the gate open: bf16 exactly where extraction's auto would choose it (AMX), never fp16."""
    assert runtime.resolve_train_precision("auto", "cpu", AMX, bf16_auto=True) == ("bf16", "auto: the CPU has AMX-BF16")
    assert runtime.resolve_train_precision("auto", "cpu", ZEN4, bf16_auto=True)[0] == "fp32"
    assert runtime.resolve_train_precision("auto", "cpu", OLD, bf16_auto=True)[0] == "fp32"


@pytest.mark.parametrize("info", [AMX, OLD])
def test_train_explicit_precision_is_honoured_and_fp16_refused(info):
    assert runtime.resolve_train_precision("bf16", "cpu", info) == ("bf16", "requested")
    assert runtime.resolve_train_precision("fp32", "cpu", info) == ("fp32", "requested")
    with pytest.raises(ConfigError, match="auto, fp32, bf16"):
        runtime.resolve_train_precision("fp16", "cpu", info)
