"""Keep the calling thread's alternate signal stack across OpenVINO calls that replace it.

OpenVINO's CPU plugin gives the thread that compiles a model an alternate signal stack of its own
(``sigaltstack``) and, when the compiled model is destroyed, puts back the one it found. Compiled models
destroyed in another order than they were made leave the thread pointing at a freed stack; the next signal
delivered to a Python handler there (CPython installs every handler with ``SA_ONSTACK``: Ctrl-C, a SIGCHLD
handler such as PyTorch's DataLoader sets) then kills the process with a segmentation fault that not even
``faulthandler`` can report (measured with OpenVINO 2026.4 on CPU). :func:`kept_signal_stack` restores the
thread's stack after such a call, so every compiled model saves, and later restores, a stack that stays valid.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class _StackT(ctypes.Structure):
    """``stack_t`` of <signal.h> (Linux): base, flags (``SS_DISABLE`` = 2), size in bytes."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return lib if hasattr(lib, "sigaltstack") else None
    except OSError:  # pragma: no cover - no C library to call (not Linux/macOS)
        return None


def current() -> tuple[int, int, int] | None:
    """(base address, flags, size in bytes) of this thread's alternate signal stack; None where unknown."""
    lib = _libc()
    if lib is None:
        return None
    st = _StackT()
    if lib.sigaltstack(None, ctypes.byref(st)) != 0:
        return None
    return int(st.ss_sp or 0), int(st.ss_flags), int(st.ss_size)


@contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the block, then give this thread back the alternate signal stack it had before."""
    lib = _libc()
    before = _StackT()
    if lib is None or lib.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        if lib.sigaltstack(ctypes.byref(before), None) != 0:  # pragma: no cover - e.g. running on that stack
            log.debug("could not restore the alternate signal stack (errno %d)", ctypes.get_errno())
