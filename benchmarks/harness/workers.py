"""Worker subprocesses: whole processes as a user runs them, timed from start to exit, with the peak resident
memory of that child alone (``wait4``), and JSON results read back from the child's last output line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .machine import ROOT


@dataclass
class ProcessRun:
    """One finished child: wall seconds from start to exit, its peak RSS (GiB), exit code and output."""

    seconds: float
    peak_rss_gib: float
    returncode: int
    stdout: str
    stderr: str

    def result(self) -> Any:
        """The JSON value printed on the child's last stdout line (see :func:`emit`)."""
        lines = self.stdout.strip().splitlines()
        if not lines:
            raise ValueError(f"the worker printed nothing; its stderr ends:\n{self.stderr[-2000:]}")
        return json.loads(lines[-1])


class WorkerFailed(RuntimeError):
    """A worker subprocess exited with a non-zero code (the message holds the end of its stderr)."""


def run_process(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | str | None = None,
                check: bool = True) -> ProcessRun:
    """Run ``cmd`` to completion; Ctrl-C kills the child and re-raises. ``check``: raise :class:`WorkerFailed`
    on a non-zero exit."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        run = ProcessRun(seconds, usage.ru_maxrss / 2**20, proc.returncode,
                         out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if check and run.returncode != 0:
        raise WorkerFailed(f"{' '.join(map(str, cmd))} exited with {run.returncode}:\n{run.stderr[-3000:]}")
    return run


def module_command(module: str, *args: str | Path) -> list[str]:
    """``python -m module args`` with this interpreter (run it with ``cwd=ROOT``, see :func:`call_worker`)."""
    return [sys.executable, "-m", module, *map(str, args)]


def call_worker(module: str, *args: str | Path, env: dict[str, str] | None = None) -> tuple[Any, ProcessRun]:
    """Run ``python -m module args`` from the repository root; return its JSON result and the process facts.
    Paths in ``args`` must be absolute (the child's working directory is the repository root)."""
    run = run_process(module_command(module, *args), env=env, cwd=ROOT)
    return run.result(), run


def emit(result: Any) -> None:
    """A worker's answer: one JSON line on stdout (the last line is what :meth:`ProcessRun.result` reads)."""
    print(json.dumps(result), flush=True)
