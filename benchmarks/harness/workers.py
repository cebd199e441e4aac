"""Worker subprocesses: whole processes as a user runs them, timed from start to exit, with the peak resident
memory of that child alone (``wait4`` in a small launcher), and JSON results read back from the child's last
output line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
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


#: a minimal Python that forks, execs the command, waits and writes the child's wall time and rusage to a file.
#: Linux carries a process's peak RSS across fork and exec (a child forked from a 1 GiB benchmark starts with a
#: 1 GiB "peak"), so the command is forked from this small launcher instead of from the benchmark process.
LAUNCHER = r"""
import json, os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"cannot run {cmd[0]}: {e}", file=sys.stderr)
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
secs = time.perf_counter() - t0
with open(out, "w") as fh:
    json.dump({"seconds": secs, "maxrss_kib": ru.ru_maxrss}, fh)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_process(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | str | None = None,
                check: bool = True) -> ProcessRun:
    """Run ``cmd`` to completion (through :data:`LAUNCHER`: its seconds and peak RSS are its own, not this
    process's); Ctrl-C kills it and re-raises. ``check``: raise :class:`WorkerFailed` on a non-zero exit."""
    with tempfile.TemporaryDirectory() as tmp:
        facts, out_path, err_path = Path(tmp) / "facts.json", Path(tmp) / "out", Path(tmp) / "err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-S", "-E", "-c", LAUNCHER, str(facts), *map(str, cmd)], env=env,
                                    cwd=cwd, stdout=out, stderr=err, start_new_session=True)
            try:
                returncode = proc.wait()
            except KeyboardInterrupt:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the command (same process group)
                proc.wait()
                raise
        stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
        if not facts.is_file():
            raise WorkerFailed(f"{' '.join(map(str, cmd))}: the launcher failed ({returncode}):\n{stderr[-3000:]}")
        got = json.loads(facts.read_text())
    run = ProcessRun(got["seconds"], got["maxrss_kib"] / 2**20, returncode, stdout, stderr)
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
