"""Training options (`TrainConfig`), the protocol keys that must match on a rerun, and their hash."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, GhanetError
from ..core.runs import ItemResult
from ..protocols.presets import TRAIN_FIELDS, TRAIN_PRESET_FIELDS, apply_protocol

log = logging.getLogger(__name__)


#: config keys that must match when a run is resumed (the rest — device, folds — may change)
PROTOCOL_KEYS = ("model", "epochs", "lr", "weight_decay", "accum", "alpha", "topk", "alpha_surv", "dim",
                 "heads", "dropout", "max_patches", "seed", "select", "case_id_from", "topk_rule", "accumulation")


class TrainingError(GhanetError):
    """Training cannot continue (e.g. the loss became NaN)."""


@dataclass
class TrainConfig:
    """Training options (defaults = the paper's protocol). ``topk`` is a FRACTION (0.2 = top 20 %).

    ``protocol`` / ``preset`` (``protocols/presets.py``) fill ``lr``, ``topk``, ``select``, ``topk_rule`` and
    ``accumulation`` left at None; ``option_sources`` records where each came from.
    """

    model: str = "ghanet"
    epochs: int = 20
    lr: float | None = None
    weight_decay: float = 1e-5
    accum: int = 32
    alpha: float = 0.3
    topk: float | None = None
    alpha_surv: float = 0.0
    dim: int = 512
    heads: int = 4
    dropout: float = 0.25
    max_patches: int | None = None
    seed: int = 0
    folds: list[int] | None = None
    select: str | None = None  # "final" | "best-epoch"
    device: str = "auto"
    case_id_from: str | None = None  # None | "tcga" (case id = first 12 characters of the bag name)
    cache_gb: float = 4.0  # keep bags in memory up to this many GiB (float32), else re-read each step
    slide_types: tuple[str, ...] | None = None  # TCGA slide types to use (e.g. ("DX",)); None = every bag
    protocol: str = "ghanet"  # "ghanet" | "official"
    preset: str | None = None  # protocols.PRESETS
    topk_rule: str | None = None  # "ceil" | "floor"
    accumulation: str | None = None  # "epoch" | "carry-over"
    option_sources: dict = field(default_factory=dict)
    allow_mixed_precision: bool = False  # train on int8 bags together with float bags (or another int8 model's)
    precision: str = "auto"  # "auto" | "fp32" | "bf16" (autocast of forward passes); train_cv stores what runs

    def __post_init__(self) -> None:
        apply_protocol(self, TRAIN_FIELDS + TRAIN_PRESET_FIELDS)

    def validate(self) -> None:
        if self.accumulation not in ("epoch", "carry-over"):
            raise ConfigError(f"accumulation must be 'epoch' or 'carry-over', got {self.accumulation!r}")
        if self.topk_rule not in ("ceil", "floor"):
            raise ConfigError(f"topk_rule must be 'ceil' or 'floor', got {self.topk_rule!r}")
        if self.select not in ("final", "best-epoch"):
            raise ConfigError(f"--select must be 'final' or 'best-epoch', got {self.select!r}")
        for name in ("epochs", "accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if not 0 < self.topk <= 1:
            raise ConfigError(f"topk must be a fraction in (0, 1] (20 % = 0.2), got {self.topk}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"--alpha must be a number >= 0, got {self.alpha}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"--weight-decay must be a number >= 0, got {self.weight_decay}")
        if self.dim < self.heads or self.dim % self.heads:
            raise ConfigError(f"--dim {self.dim} must be a multiple of the {self.heads} attention heads "
                              f"(e.g. {max(self.heads, self.dim - self.dim % self.heads)})")
        if self.max_patches is not None and self.max_patches < 1:
            raise ConfigError(f"--max-patches must be at least 1, got {self.max_patches}")
        if self.case_id_from not in (None, "slide_id", "tcga"):
            raise ConfigError(f"case_id_from must be 'tcga' or 'slide_id', got {self.case_id_from!r}")


@dataclass
class TrainResult:
    run_dir: Path
    folds: list[ItemResult]
    metrics: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)


ProgressFn = Callable[..., None]


def noop_progress(*_a: Any, **_k: Any) -> None:
    return None


def protocol_options(config: TrainConfig) -> dict[str, Any]:
    """The options a rerun or resumed run must share: :data:`PROTOCOL_KEYS`, plus the (resolved) precision
    when it is not fp32 (fp32 runs keep the hash and fingerprint they had before the option existed)."""
    d = {k: getattr(config, k) for k in PROTOCOL_KEYS}
    if config.precision not in ("fp32", "auto"):
        d["precision"] = config.precision
    return d


def config_hash(config: TrainConfig) -> str:
    d = protocol_options(config)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
