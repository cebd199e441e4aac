"""Per-patch parts of G-HANet as autograd functions with hand-written backward passes.

Everything of size N x dim (N patches, one case) lives here; the token side (G x dim) stays in plain
autograd. Same maths as the module-by-module form in ``models/reference.py`` (the tests compare outputs
and every parameter gradient), but fewer passes over N x dim arrays and fewer N x dim temporaries:

- :class:`CabContext`: ``LN(dropout(relu(h_pre)))`` with the dropout scale ``s = 1/(1-p)`` folded into
  the LayerNorm epsilon (``LN(s x; eps) = LN(x; eps / s^2)`` exactly), so no scaled copy is made;
- :class:`CrossPass`: one cross-attention pass of (heads x G) key-side queries over the context; its
  backward returns the context gradient of scores and pooling as ONE ``(N, 2hG) x (2hG, dim)`` product;
- :func:`hyper_pool`: the survival branch's patch side (LayerNorm, ReLU + dropout, gated attention,
  softmax over patches, hyper-attention pooling); ``s`` is folded into the gate weights and the pooled
  result, the gate's input gradient and the pooling's input gradient are one ``(N, 2H+G) x (2H+G, dim)``
  product, element-wise steps run in place.
"""

from __future__ import annotations

import math

import torch

_aten = torch.ops.aten


def drop_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Boolean mask, True with probability ``p`` (to 1/65536), from 16 random bits per element.

    Draws 64-bit words (4 elements per draw) instead of one generator call per element as
    ``bernoulli_`` does: about 5x cheaper for the (N, 512) patch embeddings of large bags.
    """
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None)
    bits = words.view(torch.int16)[:numel].view(shape)
    return bits < (-32768 + round(p * 65536))


def _dropped(x: torch.Tensor, p: float, training: bool) -> torch.Tensor | None:
    """The dropout mask (True = dropped) the fused ReLU + dropout draws for ``x``, or None (no dropout)."""
    if not training or p == 0.0:
        return None
    return drop_mask(x.shape, p).to(x.device)


class CabContext(torch.autograd.Function):
    """``context = LayerNorm(dropout(relu(h_pre)))`` (N, dim); the mask is drawn like :class:`ReLUDropout`."""

    @staticmethod
    def forward(ctx, h_pre, weight, bias, p: float, training: bool, eps: float):  # type: ignore[override]
        drop = _dropped(h_pre, p, training)
        h = torch.relu(h_pre)
        if drop is not None:
            h.masked_fill_(drop, 0.0)
            eps = eps * (1.0 - p) ** 2                     # LN(h / (1-p); eps) == LN(h; eps (1-p)^2)
        context, mean, rstd = _aten.native_layer_norm(h, [h.shape[-1]], weight, bias, eps)
        ctx.save_for_backward(h, mean, rstd, weight, bias)
        return context

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, mean, rstd, weight, bias = ctx.saved_tensors
        need = list(ctx.needs_input_grad[:3])
        dh, dw, db = _aten.native_layer_norm_backward(grad.contiguous(), h, [h.shape[-1]], mean, rstd,
                                                      weight, bias, need)
        if dh is not None:   # relu and dropout: the gradient passes where h > 0 (kept and positive)
            dh = _aten.threshold_backward.grad_input(dh, h, 0.0, grad_input=dh)
        return dh, dw, db, None, None, None


class CrossPass(torch.autograd.Function):
    """Scores ``S = qk @ context.T`` (rows, N), ``A = dropout(softmax(S))``, pooled ``A @ context`` (rows, dim).

    ``qk`` (rows, dim) are the queries already multiplied by the key weights and the scale (rows = heads x
    G); the attention dropout draws its mask exactly as ``nn.Dropout`` does on CPU (``bernoulli_``).
    """

    @staticmethod
    def forward(ctx, qk, context, p: float, training: bool):  # type: ignore[override]
        scores = qk @ context.T
        attn = scores.softmax(dim=-1)
        if training and p > 0.0:
            noise = torch.empty_like(attn).bernoulli_(1.0 - p).div_(1.0 - p)
            attn_d = attn * noise
        else:
            noise, attn_d = None, attn
        pooled = attn_d @ context
        ctx.save_for_backward(qk, context, attn, attn_d, noise)
        return scores, pooled

    @staticmethod
    def backward(ctx, d_scores, d_pooled):  # type: ignore[override]
        qk, context, attn, attn_d, noise = ctx.saved_tensors
        if d_pooled is None:
            d_pooled = torch.zeros_like(qk)
        d_attn = d_pooled @ context.T
        if noise is not None:
            d_attn.mul_(noise)
        ds = _aten._softmax_backward_data(d_attn, attn, -1, attn.dtype)
        if d_scores is not None:
            ds.add_(d_scores)
        d_qk = ds @ context if ctx.needs_input_grad[0] else None
        d_context = None
        if ctx.needs_input_grad[1]:   # d(scores)/d(context) and d(pooled)/d(context) in one product
            d_context = torch.cat([ds, attn_d]).T @ torch.cat([qk, d_pooled])
        return d_qk, d_context, None, None


class _HyperPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hp_pre, ln_w, ln_b, w_ab, b_ab, w_c, b_c, genomic, p: float, training: bool,
                eps: float):  # type: ignore[override]
        hidden = w_ab.shape[0] // 2
        y, mean, rstd = _aten.native_layer_norm(hp_pre, [hp_pre.shape[-1]], ln_w, ln_b, eps)
        drop = _dropped(y, p, training)
        scale = 1.0 / (1.0 - p) if drop is not None else 1.0
        hp = y.relu_()                                     # hp = scale * (this), scale kept out of N x dim
        if drop is not None:
            hp.masked_fill_(drop, 0.0)
        ab = torch.addmm(b_ab, hp, w_ab.T, alpha=scale)   # gate pre-activations [a | b] (N, 2H)
        t = ab[:, :hidden].tanh_()
        sg = ab[:, hidden:].sigmoid_()
        g = t * sg
        score = torch.addmv(b_c, g, w_c.reshape(-1))
        w_mor = score.softmax(dim=0)
        hyper = (genomic + w_mor) * 0.5
        pooled = (hyper @ hp).mul_(scale)
        ctx.scale, ctx.hidden = scale, hidden
        ctx.save_for_backward(hp_pre, mean, rstd, ln_w, ln_b, hp, ab, g, w_ab, w_c, w_mor, hyper)
        return pooled, w_mor

    @staticmethod
    def backward(ctx, d_pooled, d_wmor):  # type: ignore[override]
        hp_pre, mean, rstd, ln_w, ln_b, hp, ab, g, w_ab, w_c, w_mor, hyper = ctx.saved_tensors
        scale, hidden = ctx.scale, ctx.hidden
        n, dim = hp.shape
        if d_pooled is None:
            d_pooled = torch.zeros(hyper.shape[0], dim, dtype=hp.dtype, device=hp.device)
        dxs = d_pooled * scale
        # w_mor enters pooled through hyper = (genomic + w_mor) / 2 (genomic is a constant)
        dw = hp @ (dxs.sum(dim=0) * 0.5)
        if d_wmor is not None:
            dw.add_(d_wmor)
        ds = w_mor * (dw - (w_mor * dw).sum())                    # softmax backward (N,)
        d_wc = (g.T @ ds).reshape(w_c.shape)
        d_bc = ds.sum().reshape(1)
        t, sg = ab[:, :hidden], ab[:, hidden:]
        # [d_a | d_b | hyper^T] (N, 2H + G): gate pre-activation gradients and the pooling's weights
        dab = torch.empty(n, 2 * hidden + hyper.shape[0], dtype=hp.dtype, device=hp.device)
        u = ds[:, None] * w_c.reshape(1, -1)                      # d g (N, H)
        da, db = dab[:, :hidden], dab[:, hidden:2 * hidden]
        torch.mul(u, sg, out=da)
        _aten.tanh_backward.grad_input(da, t, grad_input=da)
        torch.mul(u, t, out=db)
        _aten.sigmoid_backward.grad_input(db, sg, grad_input=db)
        dab[:, 2 * hidden:] = hyper.T
        d_ab = dab[:, :2 * hidden]
        d_wab = (d_ab.T @ hp).mul_(scale)
        d_bab = d_ab.sum(dim=0)
        d_hp = dab @ torch.cat([w_ab * scale, dxs])               # (N, dim): gate + pooling, one product
        del dab, u
        d_y = _aten.threshold_backward.grad_input(d_hp, hp, 0.0, grad_input=d_hp)
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        d_pre, d_lnw, d_lnb = _aten.native_layer_norm_backward(d_y, hp_pre, [dim], mean, rstd, ln_w, ln_b, need)
        return d_pre, d_lnw, d_lnb, d_wab, d_bab, d_wc, d_bc, None, None, None, None


def hyper_pool(hp_pre: torch.Tensor, norm: torch.nn.LayerNorm, gate, genomic: torch.Tensor, p: float,
               training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Survival-branch patch side: ``hp = dropout(relu(norm(hp_pre)))``; gated-attention weights
    ``w_mor = softmax(gate(hp))`` (N,); pooled ``((genomic + w_mor) / 2) @ hp`` (G, dim).

    ``genomic`` (G, N) is a constant (no gradient). Returns ``(pooled, w_mor)``.
    """
    w_ab = torch.cat([gate.attention_a.weight, gate.attention_b.weight])
    b_ab = torch.cat([gate.attention_a.bias, gate.attention_b.bias])
    return _HyperPool.apply(hp_pre, norm.weight, norm.bias, w_ab, b_ab, gate.attention_c.weight,
                            gate.attention_c.bias, genomic.detach(), p, training, norm.eps)


def cab_context(h_pre: torch.Tensor, norm: torch.nn.LayerNorm, p: float, training: bool) -> torch.Tensor:
    """CAB context ``norm(dropout(relu(h_pre)))`` (N, dim)."""
    return CabContext.apply(h_pre, norm.weight, norm.bias, p, training, norm.eps)


def cross_pass(qk: torch.Tensor, context: torch.Tensor, p: float, training: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One cross-attention pass (see :class:`CrossPass`): ``(scores (rows, N), pooled (rows, dim))``."""
    return CrossPass.apply(qk, context, p, training)

