"""Survival models: registry (``MODELS``, ``register_model``, ``create_model``; ``registry``), G-HANet
(``ghanet``, its layers in ``layers`` and per-patch autograd functions in ``patch_ops``), the ABMIL baseline
(``abmil``), the survival loss and outputs (``survival``), the authors' forward pass for parity tests
(``reference``) and checkpoints (``checkpoint``).

>>> model = create_model("ghanet", in_dim=1024, family_sizes=[80, 0, 120, 40, 60, 90])
>>> out = model(features)            # features: (N, 1024) float tensor, one case
>>> out["risk"], out["hazards"], out["recon"]
"""

from __future__ import annotations

from . import abmil as _abmil  # noqa: F401  (registers "abmil")
from . import ghanet as _ghanet  # noqa: F401  (registers "ghanet")
from .abmil import ABMIL
from .checkpoint import CHECKPOINT_VERSION, load_checkpoint, read_checkpoint_meta, save_checkpoint
from .ghanet import GHANet, genomic_weights, topk_count
from .registry import MODELS, create_model, register_model

__all__ = ["MODELS", "register_model", "create_model", "save_checkpoint", "load_checkpoint",
           "read_checkpoint_meta", "CHECKPOINT_VERSION", "GHANet", "ABMIL", "genomic_weights", "topk_count"]
