"""The Snakefile's GPU-slot prefix: pins a job to a free GPU and WAITS when all are busy."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time

import pytest

from ghanet_pipeline.env.gpuslots import gpu_slot_prefix

pytestmark = pytest.mark.skipif(shutil.which("flock") is None or shutil.which("bash") is None,
                                reason="needs bash and flock (util-linux)")


def _run(prefix: str, **env: str) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    return subprocess.Popen(["bash", "-c", prefix + 'echo "slot=${CUDA_VISIBLE_DEVICES:-all}"'],
                            env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _hold(path):
    fh = open(path, "w")  # noqa: SIM115 - kept open while the lock is held
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fh


def test_free_slot_is_taken_and_busy_slots_are_waited_for(tmp_path):
    locks = tmp_path / "gpu-locks"
    prefix = gpu_slot_prefix(locks, 2, poll_s=0.1)
    assert gpu_slot_prefix(locks, 0) == ""
    out, _ = _run(prefix).communicate(timeout=30)
    assert out.strip() == "slot=0"
    held0 = _hold(locks / "gpu0.lock")
    out, _ = _run(prefix).communicate(timeout=30)
    assert out.strip() == "slot=1"
    held1 = _hold(locks / "gpu1.lock")
    job = _run(prefix)
    time.sleep(1.0)
    assert job.poll() is None  # every slot busy: waiting, not running on "all GPUs"
    held1.close()  # GPU 1 becomes free
    out, err = job.communicate(timeout=30)
    assert out.strip() == "slot=1" and "waiting for a free GPU slot" in err
    held0.close()
    # inside SLURM the scheduler's assignment is kept
    out, _ = _run(prefix, SLURM_JOB_ID="7", CUDA_VISIBLE_DEVICES="3").communicate(timeout=30)
    assert out.strip() == "slot=3"
