"""Where torch runs: one rule for every command's ``--device`` (extract-features, train, predict)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(text: str | None) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a usable ``torch.device``.

    ``auto`` (and ``None``/empty) is ``cuda:0`` when a GPU is visible, else ``cpu``; ``cuda`` is
    ``cuda:0``. A device that cannot be used here raises :class:`ConfigError` (exit 2) with the fix.
    """
    import torch

    text = (text or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {text}: CUDA is not available (torch {torch.__version__}, "
                              f"built for CUDA {torch.version.cuda}); use --device cpu or check the driver "
                              f"with 'ghanet doctor'")
        idx = 0 if text == "cuda" else text.partition(":")[2]
        try:
            idx = int(idx)
        except ValueError:
            raise ConfigError(f"--device {text}: expected cuda:N with N a GPU number") from None
        if not 0 <= idx < torch.cuda.device_count():
            raise ConfigError(f"--device {text}: only {torch.cuda.device_count()} GPU(s) visible "
                              f"(cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
        return torch.device(f"cuda:{idx}")
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, not {text!r}")
