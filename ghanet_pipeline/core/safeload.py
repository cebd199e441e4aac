"""Reading tensors from files a user hands us, never unpickling, and refusing in our own words.

``torch.load(weights_only=True)`` and safetensors already refuse anything but tensors; this module
turns their raw messages into ones that name the file, say what it holds instead (Python objects
that would have to be unpickled, another format, a truncated file) and how to fix it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import GhanetError

_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _kind(path: Path) -> str:
    """What the file looks like from its first bytes: zip (torch.save), pickle, safetensors, text, ..."""
    head = _head(path)
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch (torch.save) file"
    if head.startswith(_PICKLE_MAGIC):
        return "a bare Python pickle"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if len(head) == 8 and int.from_bytes(head, "little") < (100 << 20) and _head(path, 9)[8:9] == b"{":
        return "a safetensors file"
    if not head:
        return "empty"
    return "not a tensor file"


def torch_load_tensors(path: Path | str, what: str, fix: str, error: type[GhanetError]) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; any failure raises ``error`` in our words.

    ``what`` names the file's role ("CLAM bag", "weights file"); ``fix`` says what to do instead.
    """
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader failure becomes one message naming the file
        raise error(refusal(path, exc, what, fix)) from None


def refusal(path: Path, exc: BaseException, what: str, fix: str) -> str:
    """A message for a file that could not be read as tensors."""
    text = str(exc)
    found = _GLOBAL.search(text)
    kind = _kind(path)
    pickled = kind in ("a PyTorch (torch.save) file", "a bare Python pickle")
    if found or (pickled and "Weights only load failed" in text):
        obj = f" (e.g. {found.group(1)})" if found else ""
        return (f"{what} {path} holds Python objects{obj}, not only tensors: loading it would mean unpickling, "
                f"which can run arbitrary code, so ghanet refuses it. {fix}")
    if kind == "a PyTorch (torch.save) file":
        return f"{what} {path} is a damaged or truncated PyTorch file ({type(exc).__name__}). {fix}"
    if kind == "a safetensors file":
        return f"{what} {path} is a safetensors file, not a torch.save file: rename it to .safetensors. {fix}"
    if kind == "empty":
        return f"{what} {path} is empty. {fix}"
    return f"{what} {path} is {kind if kind != 'not a tensor file' else 'not a PyTorch tensor file'}. {fix}"


def load_safetensors(path: Path | str, what: str, fix: str, error: type[GhanetError],
                     device: str = "cpu") -> dict[str, Any]:
    """Tensors of a ``.safetensors`` file; a file that is not one raises ``error`` naming what it is."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, RuntimeError ...
        kind = _kind(path)
        if kind == "a safetensors file":
            detail = f"a damaged or truncated safetensors file ({exc})"
        elif kind == "empty":
            detail = "empty"
        else:
            detail = f"not a safetensors file despite its name ({kind}"
            detail += ", which ghanet does not unpickle)" if "pickle" in kind or "PyTorch" in kind else ")"
        raise error(f"{what} {path} is {detail}. {fix}") from None


def save_safetensors(tensors: dict[str, Any], path: Path | str, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` with a reproducible header: the metadata keys are sorted.

    safetensors writes ``__metadata__`` in hash-map order, which changes from one process to the next,
    so identical weights gave files (and ``weights_sha256``) that differ. The header is rewritten in place
    with the same length (only the order of the metadata entries changes). Not atomic: write to a
    temporary path (``core.files.atomic_path``).
    """
    import struct

    from safetensors.torch import save_file

    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    if not metadata or len(metadata) < 2:
        return path
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(n)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(new) > n:  # should not happen (same entries, same escaping); keep what safetensors wrote
            return path
        fh.seek(8)
        fh.write(new + b" " * (n - len(new)))
    return path
