"""Safe file writing and naming: atomic writes, id sanitising, staying inside the output root."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def fsync_file(path: Path | str) -> None:
    """Flush a file's bytes to disk (``fsync``); a no-op where the OS refuses it for that file."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(path: Path | str) -> None:
    """Make a rename inside ``path`` durable (``fsync`` of the directory; skipped on Windows)."""
    if os.name == "nt":
        return
    fsync_file(path)


def replace_durably(tmp: Path | str, final: Path | str) -> None:
    """``fsync`` ``tmp``, rename it over ``final``, then ``fsync`` the directory: after a crash (power
    loss included) ``final`` is either the old file or the complete new one."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only if the block succeeds.

    The temporary name is ``.<name>.<host>-<pid>.<random>.tmp``: stages ignore such leftovers of
    killed runs, and :func:`remove_stale_temps` can tell a live writer's file from a dead one's.
    The file is fsynced before the rename and its directory after it (:func:`replace_durably`).
    On error the temporary file is removed and the exception propagates.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{_owner()}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # let the writer create it (h5py, PIL, ... want to create the file themselves)
    try:
        yield tmp
        replace_durably(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: Path | str, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN/inf are refused)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False,
                                              default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _owner() -> str:
    """``<host>-<pid>`` of this process, as written into temporary file names."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


#: a temporary file of another host is only removed when older than this (its writer cannot be checked)
FOREIGN_TEMP_AGE_S = 24 * 3600


_TEMP_OWNER = re.compile(r"\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


def _temp_is_stale(path: Path) -> bool:
    """True unless the temp file's writer (``<host>-<pid>`` in its name) may still be running."""
    owner = _TEMP_OWNER.search(path.name)
    if owner is None:
        return True  # written by an older version: no owner recorded
    if owner["host"] != _owner().rsplit("-", 1)[0]:
        try:
            return time.time() - path.stat().st_mtime > FOREIGN_TEMP_AGE_S
        except OSError:
            return False
    pid = int(owner["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # the process exists (owned by another user)
        return False
    return False


def remove_stale_temps(directory: Path | str, final_names: Iterable[str] | None = None) -> int:
    """Delete temporary files left by killed runs in ``directory``; return how many.

    With ``final_names`` only the temporaries of those outputs (``.<name>.*.tmp``) are considered:
    call it per item just before writing that item. A temporary file whose writer is still running
    (same host, live process id in its name; another host's file younger than a day) is left alone,
    so parallel jobs (Snakemake, ``--shard`` array jobs, two terminals on the same item) never lose
    their files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    names: list[str | None] = [None] if final_names is None else list(final_names)
    n = 0
    for name in names:
        pattern = ".*.tmp" if name is None else f".{glob.escape(name)}.*.tmp"
        for p in directory.glob(pattern):
            if not _temp_is_stale(p):
                continue
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


def file_sha256(path: Path | str, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()
