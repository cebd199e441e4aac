"""benchmarks/gpu_check.sh on a machine without a usable NVIDIA GPU: says why and exits 0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def _run(path_dirs: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": os.pathsep.join(path_dirs), "PY": sys.executable}
    return subprocess.run([shutil.which("bash"), str(SCRIPT), str(tmp_path / "work")], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_no_nvidia_smi_says_no_gpu_and_exits_0(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("date", "mktemp", "mkdir", "wc", "sort", "uniq", "xargs"):
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    res = _run([str(bindir)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("no GPU: nvidia-smi not found")
    assert not (tmp_path / "work").exists()  # nothing made


@pytest.mark.slow  # starts Python processes (each imports torch)
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_listed_but_torch_without_cuda_says_no_gpu_and_exits_0(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 0\n")
    fake.chmod(0o755)
    res = _run([str(bindir), os.environ.get("PATH", "")], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("no GPU: torch cannot use CUDA here")
    assert not (tmp_path / "work").exists()
