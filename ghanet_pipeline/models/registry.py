"""Model registry: name -> builder (``register_model``), ``create_model(name, **config)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError
from ..core.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: name (the one stored in checkpoints) -> builder of the model
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under ``name`` (the name stored in checkpoints)."""
    return MODELS.register(name)


def create_model(name: str, **config: Any) -> nn.Module:
    """Build a registered model; unknown names or options raise :class:`ConfigError`.

    The returned module has ``name`` (registry name), ``config`` (the keyword arguments that rebuild it,
    saved in checkpoints as ``model_config``) and ``needs_genomics``.
    """
    builder = MODELS.lookup(name)
    params = inspect.signature(builder).parameters
    unknown = [k for k in config if k not in params]
    if unknown:
        raise ConfigError(f"model {name!r} has no option(s) {', '.join(unknown)}; "
                          f"it accepts: {', '.join(params)}")
    return builder(**config)
