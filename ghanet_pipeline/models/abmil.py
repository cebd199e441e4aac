"""ABMIL baseline (Ilse et al. 2018): gated-attention MIL pooling + the G-HANet kind of survival head.

The paper's ablation baseline: no genomics, no tokens. ``Linear(in_dim, dim) -> ReLU -> Dropout``
patch embedding, gated attention weights (softmax over patches), attention-weighted mean, compression
``Linear(dim, dim/2) -> LayerNorm -> ReLU -> Dropout``, ``Linear(dim/2, n_bins)`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .ghanet import _check_features
from .layers import GatedAttention, survival_outputs
from .registry import register_model


class ABMIL(nn.Module):
    """``model(features (N, in_dim))`` -> dict with ``logits``, ``hazards``, ``S`` (1, n_bins), ``risk`` (1,)
    and ``w_mor`` (N,) attention weights (detached)."""

    name = "abmil"
    needs_genomics = False

    def __init__(self, in_dim: int = 1024, n_bins: int = 4, dim: int = 512, dropout: float = 0.25):
        super().__init__()
        self.config = {"in_dim": in_dim, "n_bins": n_bins, "dim": dim, "dropout": dropout}
        self.embed = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.gate = GatedAttention(dim, dim // 2)
        self.compress = nn.Sequential(nn.Linear(dim, dim // 2), nn.LayerNorm(dim // 2), nn.ReLU(),
                                      nn.Dropout(dropout))
        self.classifier = nn.Linear(dim // 2, n_bins)

    def forward(self, features: torch.Tensor) -> dict:
        features = _check_features(features, self.config["in_dim"], self.classifier.weight)
        h = self.embed(features)
        w = self.gate(h).softmax(dim=0)
        pooled = (w @ h).unsqueeze(0)
        out = survival_outputs(self.classifier(self.compress(pooled)))
        out["w_mor"] = w.detach()
        return out


@register_model("abmil")
def build_abmil(in_dim: int = 1024, n_bins: int = 4, dim: int = 512, dropout: float = 0.25,
                family_sizes: Sequence[int] | None = None, heads: int | None = None,
                topk: float | None = None) -> ABMIL:
    """ABMIL. ``family_sizes``, ``heads`` and ``topk`` are accepted and ignored, so one option set can
    build either model; they are not stored in the checkpoint's ``model_config``."""
    return ABMIL(in_dim, n_bins, dim, dropout)
