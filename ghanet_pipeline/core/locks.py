"""File locks for outputs shared by concurrent jobs (Snakemake, SLURM array jobs, two terminals).

:class:`OutputLocks` keeps its lock files in ``<root>/.locks/<name>/`` (outside the output folder itself,
so that replacing the folder never removes a lock someone holds):

- ``output.lock`` — exclusive and short: held while a job checks or rewrites the shared files of the
  output (``config.json``, the merged reports) or replaces the folder (``--overwrite``);
- ``job-<host>~<pid>.lock`` — held by every job for its whole life, so that ``--overwrite`` can see that
  another job still works in the folder (:meth:`OutputLocks.busy_jobs`) and refuse;
- ``<item>.lock`` — exclusive per item (``fold_0``): two jobs never train the same fold at once; the
  second one waits, then finds the fold finished.

Locks are OS locks (``filelock``, ``flock`` on Unix): a killed job releases them at once (its
``job-*.lock`` file is removed by the next :meth:`OutputLocks.busy_jobs`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .ids import sanitize_id

log = logging.getLogger(__name__)

LOCKS_DIR = ".locks"


def acquire(lock: FileLock, what: str) -> None:
    """Acquire ``lock``; when another process holds it, log that we wait (``what``) and then wait."""
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        pass
    log.info("waiting for %s (held by another process: %s)", what, lock.lock_file)
    lock.acquire()


class OutputLocks:
    """The locks of one shared output ``<root>/<name>`` (see module docstring)."""

    def __init__(self, root: Path | str, name: str) -> None:
        self.dir = Path(root) / LOCKS_DIR / sanitize_id(name, "output name")
        self._job: FileLock | None = None
        self._job_path: Path | None = None

    def _lock(self, name: str) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / f"{name}.lock"), thread_local=False)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold ``output.lock`` (waits while another job holds it)."""
        lock = self._lock("output")
        acquire(lock, f"the lock of {self.dir.name}")
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def item(self, name: str) -> Iterator[None]:
        """Hold the lock of one item (e.g. ``fold_0``; waits while another job holds it)."""
        lock = self._lock(sanitize_id(name, "item"))
        acquire(lock, f"{name} of {self.dir.name}")
        try:
            yield
        finally:
            lock.release()

    def register_job(self) -> None:
        """Hold a lock file naming this process for as long as the job runs (:meth:`release_job` ends it)."""
        if self._job is not None:
            return
        host = socket.gethostname().replace("/", "_")[:40] or "host"
        self._job_path = self.dir / f"job-{host}~{os.getpid()}.lock"
        self._job = self._lock(self._job_path.stem)
        self._job.acquire(timeout=0)

    def release_job(self) -> None:
        if self._job is None:
            return
        with contextlib.suppress(OSError):  # nobody waits on job locks: safe to remove while held
            assert self._job_path is not None
            self._job_path.unlink()
        self._job.release()
        self._job = self._job_path = None

    def busy_jobs(self) -> list[str]:
        """Names of the job locks held by other live processes (stale ones are removed).

        Call it while holding :meth:`exclusive`, so that no job registers in between.
        """
        busy: list[str] = []
        if not self.dir.is_dir():
            return busy
        for p in sorted(self.dir.glob("job-*.lock")):
            if self._job_path is not None and p == self._job_path:
                continue
            other = FileLock(str(p), thread_local=False)
            try:
                other.acquire(timeout=0)
            except Timeout:
                busy.append(p.stem[4:])
                continue
            with contextlib.suppress(OSError):  # a killed job's leftover
                p.unlink()
            other.release()
        return busy
