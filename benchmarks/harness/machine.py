"""What a figure depends on besides the code: the machine facts every record carries."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

#: repository root (the git checkout whose commit a record names)
ROOT = Path(__file__).resolve().parents[2]

#: instruction-set flags worth naming (prefixes of /proc/cpuinfo flags): vector widths, bf16/fp16, AMX
ISA_PREFIXES = ("sse4_2", "avx", "fma", "f16c", "amx")


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def git_commit(root: Path = ROOT) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool}`` of the checkout at ``root`` (changes under results/ aside)."""
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout if res.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results") if sha else None
    return {"commit": sha.strip() if sha else None, "dirty": bool(status and status.strip())}


def memory_gib() -> float | None:
    """Physical memory in GiB (None where unknown)."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def torch_facts() -> dict[str, Any]:
    """torch version, its intra-op threads and the GPUs it sees (imports torch: call once per run)."""
    try:
        import torch
    except ImportError:
        return {"torch": None}
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda,
            "gpus": gpus}


def machine_facts(with_torch: bool = True) -> dict[str, Any]:
    """CPU model and instruction sets (AVX-512 and AMX included), cores, memory, OS, Python, torch, GPUs,
    the git commit, and the environment variables that change speed (threads, glibc malloc, oneDNN)."""
    from ghanet_pipeline.env.runtime import cpu_cores, cpu_info

    info = cpu_info()
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("MALLOC_", "ONEDNN_", "ATEN_CPU", "CUDA_VISIBLE"))
           or k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    facts: dict[str, Any] = {
        "cpu_model": info.model,
        "cpu_flags": sorted(f for f in info.flags if f.startswith(ISA_PREFIXES)),
        "cpu_bf16": info.describe()[len(info.model) + 2:],
        "avx512": any(f.startswith("avx512") for f in info.flags),
        "amx": any(f.startswith("amx") for f in info.flags),
        "cores": cpu_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "env": env,
        **git_commit(),
    }
    if with_torch:
        facts.update(torch_facts())
    return facts
