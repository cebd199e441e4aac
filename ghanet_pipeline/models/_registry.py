"""Model registry: name -> builder (``register_model``), ``create_model(name, **config)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under ``name`` (the name stored in checkpoints)."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS and MODELS[name] is not builder:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = builder
        return builder

    return wrap


def create_model(name: str, **config: Any) -> nn.Module:
    """Build a registered model; unknown names or options raise :class:`ConfigError`.

    The returned module has ``name`` (registry name), ``config`` (the keyword arguments that rebuild it,
    saved in checkpoints as ``model_config``) and ``needs_genomics``.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    builder = MODELS[name]
    params = inspect.signature(builder).parameters
    unknown = [k for k in config if k not in params]
    if unknown:
        raise ConfigError(f"model {name!r} has no option(s) {', '.join(unknown)}; "
                          f"it accepts: {', '.join(params)}")
    return builder(**config)
