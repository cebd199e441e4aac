"""GPU slots on a multi-GPU workstation: a shell prefix that pins a job to a free GPU, waiting for one.

Used by ``pipelines/Snakefile`` (``local_gpus``): each GPU ``i`` has a lock file ``<lock_dir>/gpu<i>.lock``;
the job takes the first free one with ``flock -n`` (held on file descriptor 9 until the job ends, released
by the OS even when it is killed) and runs with ``CUDA_VISIBLE_DEVICES=i``. When every slot is taken it
waits and tries again — it never falls through to "all GPUs visible". Inside SLURM (``SLURM_JOB_ID`` set)
the scheduler assigns GPUs and the prefix does nothing.
"""

from __future__ import annotations

import shlex
from pathlib import Path


def gpu_slot_prefix(lock_dir: Path | str, n_gpus: int, poll_s: float = 2.0) -> str:
    """Shell text to put before a command (ends with ``; ``); empty when ``n_gpus`` <= 0."""
    if n_gpus <= 0:
        return ""
    d = shlex.quote(str(lock_dir))
    return (
        'if [ -z "${SLURM_JOB_ID:-}" ]; then mkdir -p ' + d + "; _ghanet_slot=; _ghanet_said=; "
        'while [ -z "$_ghanet_slot" ]; do '
        f"for i in $(seq 0 {int(n_gpus) - 1}); do exec 9>{d}/gpu$i.lock; "
        "if flock -n 9; then _ghanet_slot=$i; break; fi; done; "
        'if [ -z "$_ghanet_slot" ]; then '
        '[ -n "$_ghanet_said" ] || echo "waiting for a free GPU slot (all ' + str(int(n_gpus))
        + ' busy: ' + d + ')" >&2; _ghanet_said=1; '
        f"sleep {float(poll_s):g}; fi; done; "
        'export CUDA_VISIBLE_DEVICES=$_ghanet_slot; fi; '
    )
