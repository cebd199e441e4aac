"""G-HANet (Wang et al.): histo-genomic knowledge distillation for survival prediction from a slide bag.

Two branches share nothing but the bag of patch features ``F`` (N, in_dim):

* CAB (cross-modal associating branch): G learnable family tokens attend twice, with ONE shared
  multi-head cross attention, over the embedded patches; the step-2 pre-softmax scores averaged over
  heads are the association matrix ``A`` (G, N); per-family SNN heads reconstruct the selected genes
  (training targets only, a family with 0 selected genes has no head).
* HSB (hyper-attention survival branch): its own patch embedding; per family, patch weights are the mean
  of the morphology weights (gated attention, softmax over patches) and the genomic weights (softmax of
  ``A`` over that family's top-k% patches, zeros elsewhere, *detached*: the survival loss does not
  train CAB through them); the weighted patch sums go through a residual MLP, are fused with the CAB
  output ``(f_GI + r2) / 2`` (so CAB does get survival gradient through r2, as in the released code),
  then self attention among the G tokens, a GEGLU FFN, compression to 256 per token and a linear layer
  to ``n_bins`` logits.

Speed (same parameters and outputs as the textbook form, see ``models/reference.py``): keys/values are
never projected per patch (see :class:`MultiHeadCrossAttention`), LN(h) is computed once for both
cross-attention steps, ReLU + dropout of the patch embeddings is one op with a cheap float mask
(:class:`ReLUDropout`, in place on the fresh embedding), each cross-attention pass and the survival
branch's patch side after its LayerNorm are single autograd nodes with hand-written backward passes
(``models/patch_ops.py``: grouped products, no N x dim temporaries autograd would keep), and the top-k
genomic weights come from ``topk``, not a sort. Memory and time are linear in N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import ConfigError, InputError
from .layers import (
    GatedAttention,
    GEGLUFeedForward,
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    ReLUDropout,
    SNNHead,
    survival_outputs,
)
from .patch_ops import hyper_pool
from .registry import register_model

TOPK_RULES = ("ceil", "floor")


def topk_count(n_patches: int, topk: float, rule: str = "ceil") -> int:
    """Number of patches kept per family for a bag of ``n_patches``.

    ``rule="ceil"`` (ours): ``ceil(topk * N)``, at least 1, at most N. ``rule="floor"`` (the authors'
    released code): ``int(N * topk)`` computed in floating point exactly as they do; it can be 0 (N <
    1/topk), which :func:`genomic_weights` refuses with an :class:`InputError`.
    """
    if rule == "floor":
        return int(n_patches * topk)
    if rule != "ceil":
        raise ConfigError(f"unknown top-k rule {rule!r}; use one of {', '.join(TOPK_RULES)}")
    return min(n_patches, max(1, math.ceil(round(topk * n_patches, 6))))


def genomic_weights(assoc: torch.Tensor, topk: float, rule: str = "ceil") -> torch.Tensor:
    """Genomic patch weights (G, N) from the association matrix ``assoc`` (G, N).

    Per family (row): softmax over its highest-scoring patches, zeros elsewhere. ``rule="ceil"`` keeps
    exactly ``topk_count(N, topk)`` patches; ``rule="floor"`` (official) keeps every patch scoring >= the
    ``int(N * topk)``-th highest score (ties included, so possibly more than k). The result is detached:
    no gradient reaches ``assoc``.
    """
    a = assoc.detach()
    k = topk_count(a.shape[1], topk, rule)
    if rule == "floor":
        if k < 1:
            raise InputError(
                f"the official top-k rule int(N * topk) selects no patch for a bag of N={a.shape[1]} patches "
                f"at topk={topk:g} (needs N >= {_floor_min_patches(topk)}); use the ghanet protocol "
                f"(ceil rule, at least one patch), a larger --topk, or drop bags this small")
        kth = a.topk(k, dim=1).values[:, -1:]
        return torch.where(a >= kth, a, a.new_tensor(float("-inf"))).softmax(dim=1)
    vals, idx = a.topk(k, dim=1)
    return torch.zeros_like(a).scatter_(1, idx, vals.softmax(dim=1))


def _floor_min_patches(topk: float) -> int:
    """Smallest N with ``int(N * topk) >= 1``."""
    n = max(1, math.floor(1 / topk) - 1)
    while int(n * topk) < 1:
        n += 1
    return n


class CrossModalAssociation(nn.Module):
    """CAB: family tokens x patches cross attention (shared weights, used twice) + gene reconstruction."""

    def __init__(self, in_dim: int, family_sizes: Sequence[int], dim: int, heads: int, dropout: float):
        super().__init__()
        self.family_sizes = [int(n) for n in family_sizes]
        self.embed = nn.Linear(in_dim, dim)             # -> ReLU -> Dropout (applied in forward)
        self.embed_act = ReLUDropout(dropout, inplace=True)   # on the fresh embed output
        self.tokens = nn.Parameter(torch.randn(len(self.family_sizes), dim))
        self.mhca = MultiHeadCrossAttention(dim, heads, dropout)   # shared by step 1 and step 2
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_patches = nn.LayerNorm(dim)           # LN(h), computed once, used by both steps
        self.norm_ffn1 = nn.LayerNorm(dim)
        self.ffn1 = GEGLUFeedForward(dim, 4, dropout)
        self.norm_query2 = nn.LayerNorm(dim)
        self.norm_ffn2 = nn.LayerNorm(dim)
        self.ffn2 = GEGLUFeedForward(dim, 4, dropout)
        self.norm_out = nn.LayerNorm(dim)
        self.recon_heads = nn.ModuleDict({str(i): SNNHead(dim, n, dropout)
                                          for i, n in enumerate(self.family_sizes) if n > 0})

    def forward(self, h_pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
        """``h_pre``: embedding pre-activations (N, dim). Returns r2 (G, dim), A (G, N), recon."""
        context = self.norm_patches(self.embed_act(h_pre))     # LN(h), computed once for both steps
        r1, _ = self.mhca(self.norm_tokens(self.tokens), context)
        r1 = self.ffn1(self.norm_ffn1(r1)) + r1
        r2, scores = self.mhca(self.norm_query2(self.tokens + r1), context)
        r2 = self.norm_out(self.ffn2(self.norm_ffn2(r2)) + r2)
        assoc = scores.mean(dim=0)                      # (G, N) pre-softmax scaled scores, head mean
        recon = [self.recon_heads[str(i)](r2[i]) if str(i) in self.recon_heads else None
                 for i in range(len(self.family_sizes))]
        return r2, assoc, recon


class HyperAttentionSurvival(nn.Module):
    """HSB: morphology + genomic hyper-attention pooling, fusion with CAB, token self attention, classifier."""

    def __init__(self, in_dim: int, n_families: int, n_bins: int, dim: int, heads: int, dropout: float,
                 topk: float, topk_rule: str = "ceil"):
        super().__init__()
        self.topk = topk
        self.topk_rule = topk_rule
        self.embed = nn.Linear(in_dim, dim)             # -> LayerNorm -> ReLU -> Dropout (in forward)
        self.embed_norm = nn.LayerNorm(dim)
        self.embed_act = ReLUDropout(dropout)
        self.gate = GatedAttention(dim, dim // 2)
        self.hyper = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(),
                                   nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU())
        self.mhsa = MultiHeadSelfAttention(dim, heads, dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = GEGLUFeedForward(dim, 4, dropout)
        self.compress = nn.Sequential(nn.Linear(dim, dim // 2), nn.LayerNorm(dim // 2), nn.ReLU(),
                                      nn.Dropout(dropout))
        self.classifier = nn.Linear(n_families * (dim // 2), n_bins)

    def forward(self, hp_pre: torch.Tensor, assoc: torch.Tensor, r2: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``hp_pre`` (N, dim) embedding pre-activations, ``assoc`` (G, N), ``r2`` (G, dim) -> logits, w_mor."""
        # hp = dropout(relu(LN(hp_pre))); w_mor = softmax(gate(hp)) (N,); x = M_hyper @ hp (G, dim) with
        # M_hyper = (genomic + w_mor) / 2
        x, w_mor = hyper_pool(self.embed_norm(hp_pre), self.gate, genomic_weights(assoc, self.topk, self.topk_rule),
                              self.embed_act.p, self.training)
        f = (x + self.hyper(x) + r2) * 0.5                              # (f_GI + r2) / 2
        f = self.mhsa(f) + f
        f = self.ffn(self.norm_ffn(f)) + f
        logits = self.classifier(self.compress(f).reshape(1, -1))
        return logits, w_mor


class GHANet(nn.Module):
    """G-HANet for one case: ``model(features (N, in_dim))`` -> dict.

    Keys: ``logits``, ``hazards``, ``S`` (each (1, n_bins)), ``risk`` (1,) (higher = worse), ``recon``
    (list over families of (n_i,) reconstructed standardised genes, or None when n_i = 0), ``assoc`` (G, N)
    pre-softmax association (detached), ``w_mor`` (N,) morphology attention (detached).
    """

    name = "ghanet"
    needs_genomics = True

    def __init__(self, in_dim: int = 1024, family_sizes: Sequence[int] = (0,) * 6, n_bins: int = 4,
                 dim: int = 512, heads: int = 4, dropout: float = 0.25, topk: float = 0.2,
                 topk_rule: str = "ceil"):
        super().__init__()
        family_sizes = [int(n) for n in family_sizes]
        if not family_sizes or min(family_sizes) < 0:
            raise ConfigError(f"family_sizes must list one gene count >= 0 per family, got {family_sizes}")
        if not 0 < topk <= 1:
            raise ConfigError(f"topk must be a fraction in (0, 1], got {topk}")
        if topk_rule not in TOPK_RULES:
            raise ConfigError(f"topk_rule must be one of {', '.join(TOPK_RULES)} (ceil = ours, floor = the "
                              f"authors' released code), got {topk_rule!r}")
        self.config = {"in_dim": in_dim, "family_sizes": family_sizes, "n_bins": n_bins, "dim": dim,
                       "heads": heads, "dropout": dropout, "topk": topk, "topk_rule": topk_rule}
        self.cab = CrossModalAssociation(in_dim, family_sizes, dim, heads, dropout)
        self.hsb = HyperAttentionSurvival(in_dim, len(family_sizes), n_bins, dim, heads, dropout, topk,
                                          topk_rule)

    @property
    def family_sizes(self) -> list[int]:
        return list(self.config["family_sizes"])

    def embed_pre(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activations of both patch embeddings (h_pre for CAB, hp_pre for HSB), each (N, dim).

        Two separate products: one fused (N, 2*dim) product is slower on CPU, because the
        column halves then need copies (LayerNorm input, gradient assembly).
        """
        return self.cab.embed(features), self.hsb.embed(features)

    def forward(self, features: torch.Tensor) -> dict:
        features = _check_features(features, self.config["in_dim"], self.cab.embed.weight)
        h_pre, hp_pre = self.embed_pre(features)
        r2, assoc, recon = self.cab(h_pre)
        logits, w_mor = self.hsb(hp_pre, assoc, r2)
        out = survival_outputs(logits)
        out.update(recon=recon, assoc=assoc.detach(), w_mor=w_mor.detach())
        return out


def _check_features(features: torch.Tensor, in_dim: int, like: torch.Tensor) -> torch.Tensor:
    """Check one bag's shape (N >= 1, in_dim); return it in the weights' dtype/device (float16 bags)."""
    if features.dim() != 2 or features.shape[1] != in_dim or features.shape[0] == 0:
        raise InputError(f"expected one bag of patch features shaped (N >= 1, {in_dim}), got "
                         f"{tuple(features.shape)}; check the encoder's output dimension and empty bags")
    return features.to(device=like.device, dtype=like.dtype)


@register_model("ghanet")
def build_ghanet(in_dim: int = 1024, family_sizes: Sequence[int] = (0,) * 6, n_bins: int = 4,
                 dim: int = 512, heads: int = 4, dropout: float = 0.25, topk: float = 0.2,
                 topk_rule: str = "ceil") -> GHANet:
    """G-HANet; ``family_sizes`` = genes selected per family (token order), G = len(family_sizes).

    ``topk_rule``: ``"ceil"`` (ours, default) or ``"floor"`` (the authors' ``int(N * topk)`` with ties).
    """
    return GHANet(in_dim, family_sizes, n_bins, dim, heads, dropout, topk, topk_rule)
