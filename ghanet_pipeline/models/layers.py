"""Building blocks of G-HANet and ABMIL: GEGLU feed-forward, cross/self attention, gated attention, SNN heads.

All blocks work on one case (no batch dimension): patches are rows of an ``(N, dim)`` tensor and the
family tokens are rows of a ``(G, dim)`` tensor. Cost is linear in N everywhere (attention is always
between the G tokens and the N patches, or among the G tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .patch_ops import apply_keep_, cross_pass, relu_grad
from .survival import risk_from_survival, survival_from_hazards


class _ReLUDropout(torch.autograd.Function):
    """``dropout(relu(x), p)`` in one pass; backward needs only the output (no separate mask kept)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool) -> torch.Tensor:  # type: ignore[override]
        scale = 1.0 / (1.0 - p)
        if inplace:
            out = x.relu_()
            ctx.mark_dirty(x)
        else:
            out = torch.relu(x)
        apply_keep_(out, p, scale)
        ctx.scale = scale
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return relu_grad(grad, out, ctx.scale), None, None


class ReLUDropout(nn.Module):
    """ReLU followed by dropout (``nn.Sequential(nn.ReLU(), nn.Dropout(p))`` semantics), fused for speed.

    Training: ``relu(x) * keep / (1 - p)`` with keep ~ Bernoulli(1 - p); eval: ``relu(x)``. Only the
    output is kept for backward (an output entry > 0 marks where the gradient passes). ``inplace=True``
    overwrites the input (for inputs nothing else needs, like a fresh Linear output).
    """

    def __init__(self, p: float = 0.25, inplace: bool = False):
        super().__init__()
        self.p = float(p)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return F.relu(x, inplace=self.inplace)
        if self.p >= 1.0:
            return F.dropout(F.relu(x), self.p, training=True)
        return _ReLUDropout.apply(x, self.p, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", inplace=True" if self.inplace else "")


class GEGLUFeedForward(nn.Module):
    """GEGLU feed-forward: ``Linear(dim, 2*mult*dim)`` -> value * GELU(gate) -> ``Linear(mult*dim, dim)`` -> Dropout.

    With dim 512 and mult 4: 512 -> 4096, split into two halves of 2048 (value, gate), -> 512.
    """

    def __init__(self, dim: int = 512, mult: int = 4, dropout: float = 0.25):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult * 2)
        self.proj_out = nn.Linear(dim * mult, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.dropout(self.proj_out(value * F.gelu(gate)))


class MultiHeadCrossAttention(nn.Module):
    """Multi-head cross attention of G queries over N context rows (one case, no batch dimension).

    Bias-free q/k/v projections (``to_q``, ``to_k``, ``to_v``: ``Linear(dim, dim)``), scaled dot product
    (scale ``dim_head ** -0.5``), softmax over the context rows, dropout on the attention weights,
    output ``Linear(dim, dim)`` (``to_out``, with bias).

    Fast path, mathematically identical to projecting every context row: the key projection is moved to
    the query side (``q_h . (W_k,h c) = (W_k,h^T q_h) . c``) and the value projection is applied after
    pooling (``sum_j a_j W_v,h c_j = W_v,h (sum_j a_j c_j)``). Scores and pooling are then two
    ``(heads*G, dim) x (dim, N)`` products instead of two ``(N, dim) x (dim, dim)`` projections of the
    patches, and nothing of size ``N x dim`` is created besides the context itself.
    """

    def __init__(self, dim: int = 512, heads: int = 4, dropout: float = 0.25):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dim_head = dim // heads
        self.scale = self.dim_head ** -0.5
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend ``queries`` (G, dim) over ``context`` (N, dim).

        Returns ``(out, scores)``: ``out`` (G, dim) and the pre-softmax scaled scores
        ``scores`` (heads, G, N).
        """
        g, dim = queries.shape
        h, dh = self.heads, self.dim_head
        q = self.to_q(queries).view(g, h, dh).transpose(0, 1)                     # (h, G, dh)
        # keys moved to the query side: (h, G, dh) x (h, dh, dim) -> (h, G, dim), scaled once here
        qk = torch.bmm(q, self.to_k.weight.view(h, dh, dim)) * self.scale
        # scores (h*G, N), softmax over N, attention dropout, pooling (h*G, dim): one autograd node
        scores, pooled = cross_pass(qk.reshape(h * g, dim), context, self.attn_dropout.p, self.training)
        scores, pooled = scores.view(h, g, -1), pooled.view(h, g, dim)
        # values after pooling: (h, G, dim) x (h, dim, dh) -> (h, G, dh)
        out = torch.bmm(pooled, self.to_v.weight.view(h, dh, dim).transpose(1, 2))
        out = out.transpose(0, 1).reshape(g, h * dh)
        return self.to_out(out), scores

    def forward_reference(self, queries: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Textbook form (project every context row to keys and values); same result, O(N dim^2)."""
        g, dim = queries.shape
        h, dh = self.heads, self.dim_head
        q = self.to_q(queries).view(g, h, dh).transpose(0, 1)
        k = self.to_k(context).view(-1, h, dh).transpose(0, 1)                  # (h, N, dh)
        v = self.to_v(context).view(-1, h, dh).transpose(0, 1)
        scores = torch.bmm(q, k.transpose(1, 2)) * self.scale
        attn = self.attn_dropout(scores.softmax(dim=-1))
        out = torch.bmm(attn, v).transpose(0, 1).reshape(g, h * dh)
        return self.to_out(out), scores


class MultiHeadSelfAttention(MultiHeadCrossAttention):
    """Multi-head self attention among the G tokens (bias-free q/k/v, attention dropout, output Linear)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_reference(x, x)[0]


class GatedAttention(nn.Module):
    """Gated attention pooling weights (Ilse et al. 2018), one score per patch.

    ``tanh(Linear(dim, hidden)) * sigmoid(Linear(dim, hidden)) -> Linear(hidden, 1)``; returns the raw
    scores (N,). The two input projections run as one ``(N, dim) x (dim, 2*hidden)`` product.
    """

    def __init__(self, dim: int = 512, hidden: int = 256):
        super().__init__()
        self.attention_a = nn.Linear(dim, hidden)
        self.attention_b = nn.Linear(dim, hidden)
        self.attention_c = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([self.attention_a.weight, self.attention_b.weight])
        bias = torch.cat([self.attention_a.bias, self.attention_b.bias])
        a, b = F.linear(x, weight, bias).chunk(2, dim=-1)
        return self.attention_c(torch.tanh(a) * torch.sigmoid(b)).squeeze(-1)


class SNNHead(nn.Module):
    """Gene reconstruction head: ``Linear(dim, dim) -> LayerNorm -> ELU -> Dropout -> Linear(dim, n_out)``."""

    def __init__(self, dim: int, n_out: int, dropout: float = 0.25):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ELU(), nn.Dropout(dropout),
                                 nn.Linear(dim, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def survival_outputs(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Discrete-time survival outputs from logits (1, n_bins).

    hazards = sigmoid(logits) (probability of the event in each bin given survival to its start),
    S = cumprod(1 - hazards) (probability of surviving past each bin), risk = -sum(S) (higher = worse).
    Computed in float32 whatever the logits' dtype (bf16 under autocast: risks would keep 8 bits).
    """
    logits = logits.float()  # the same tensor when it is float32 already
    hazards = torch.sigmoid(logits)
    surv = survival_from_hazards(hazards)
    return {"logits": logits, "hazards": hazards, "S": surv, "risk": risk_from_survival(surv)}
