"""`ghanet doctor` (env/doctor.py): the CPU line names the bf16 capability and the precision auto picks."""

from __future__ import annotations

from ghanet_pipeline.env import runtime
from ghanet_pipeline.env.runtime import CpuInfo

AMX = CpuInfo("Fake Xeon (Sapphire Rapids)", frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}))
ZEN4 = CpuInfo("Fake EPYC (Zen 4)", frozenset({"avx512f", "avx512_bf16"}))


def test_doctor_names_cpu_bf16_capability_and_auto_choice(monkeypatch, tmp_path):
    from ghanet_pipeline.env.doctor import run_checks

    monkeypatch.setattr(runtime, "cpu_info", lambda: ZEN4)
    checks = {c.name: c for c in run_checks(tmp_path)}
    assert ZEN4.model in checks["CPU"].value and "AVX512-BF16" in checks["CPU"].value
    assert checks["precision auto (CPU)"].value.startswith("fp32")
    monkeypatch.setattr(runtime, "cpu_info", lambda: AMX)
    checks = {c.name: c for c in run_checks(tmp_path)}
    assert checks["precision auto (CPU)"].value.startswith("bf16") and "AMX" in checks["CPU"].value
