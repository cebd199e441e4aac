"""Per-patch parts of G-HANet as autograd functions with hand-written backward passes (public torch ops).

Everything of size N x dim (N patches, one case) that autograd would handle op by op is done here in
fewer passes and with fewer N x dim temporaries; the token side (G x dim) stays in plain autograd. Same
maths as the module-by-module form in ``models/reference.py`` (the tests compare outputs and every
parameter gradient, and check each backward against finite differences):

- :func:`keep_mask`: the dropout multiplier as a float tensor from 16 random bits per element;
- :class:`CrossPass`: one cross-attention pass of (heads x G) key-side queries over the context; its
  backward returns the context gradient of scores and pooling as ONE ``(N, 2hG) x (2hG, dim)`` product
  (autograd: two products and an addition);
- :func:`hyper_pool`: the survival branch's patch side after its LayerNorm (ReLU + dropout, gated
  attention, softmax over patches, hyper-attention pooling). The dropout scale is folded into the gate
  weights and the pooled result (no scaled N x dim copy), the gate's and the pooling's input gradients
  are ONE ``(N, 2H + G) x (2H + G, dim)`` product, activations are applied in place.
"""

from __future__ import annotations

import math

import torch

BLOCK_ELEMENTS = 1 << 20
"""Elements per block of rows where N x dim work is done block by block (dropout masks, large-bag backward)."""


def keep_mask(shape: torch.Size, p: float, scale: float = 1.0) -> torch.Tensor:
    """Dropout multiplier (float32, CPU): ``scale`` with probability ``1 - p`` (to 1/65536), else 0.

    16 random bits per element, drawn as 64-bit words (4 elements per generator call, about 5x cheaper
    than ``bernoulli_`` for the (N, 512) patch embeddings of large bags), compared with a threshold in
    float arithmetic: a float multiplier is applied with one vectorised multiply, several times faster
    on CPU than ``masked_fill_`` with a boolean mask.
    """
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None)
    bits = words.view(torch.int16)[:numel].view(shape)
    threshold = -32768 + round(p * 65536)                  # keep iff bits >= threshold
    keep = bits.to(torch.float32).sub_(threshold - 1)      # integers: >= 1 where kept, <= 0 where dropped
    return keep.clamp_(0.0, 1.0) if scale == 1.0 else keep.mul_(scale).clamp_(0.0, scale)


def apply_keep_(x: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """Multiply ``x`` (N, dim) in place by a dropout multiplier (``scale`` w.p. ``1 - p``, else 0).

    On CPU the mask comes from :func:`keep_mask`, drawn per block of rows so that no N x dim mask exists
    (the random stream is the same as one draw for the whole tensor); elsewhere from ``torch.rand``.
    """
    if x.device.type != "cpu":
        return x.mul_((torch.rand_like(x) >= p).to(x.dtype) * scale)
    rows = max(1, BLOCK_ELEMENTS // max(1, x.shape[-1]))       # 4 MiB of mask per block
    for block in x.split(rows):
        block.mul_(keep_mask(block.shape, p, scale))
    return x


def relu_grad(grad: torch.Tensor, out: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Gradient through ``out = relu(x) * m`` with ``m`` in {0, ``scale``}: ``scale * grad`` where ``out > 0``."""
    mult = out.sign()
    if scale != 1.0:
        mult.mul_(scale)
    return mult.mul_(grad)


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
        ctx.set_materialize_grads(False)                   # pass 1's scores get no gradient: no zeros
        return scores, pooled

    @staticmethod
    def backward(ctx, d_scores, d_pooled):  # type: ignore[override]
        qk, context, attn, attn_d, noise = ctx.saved_tensors
        if d_pooled is None:
            d_pooled = torch.zeros_like(qk)
        d_attn = d_pooled @ context.T
        if noise is not None:
            d_attn.mul_(noise)
        ds = attn * (d_attn - (d_attn * attn).sum(dim=-1, keepdim=True))       # softmax backward
        if d_scores is not None:
            ds.add_(d_scores)
        d_qk = ds @ context if ctx.needs_input_grad[0] else None
        d_context = None
        if ctx.needs_input_grad[1]:   # d(scores)/d(context) and d(pooled)/d(context) in one product
            d_context = torch.cat([ds, attn_d]).T @ torch.cat([qk, d_pooled])
        return d_qk, d_context, None, None


REUSE_MIN_ELEMENTS = 1 << 24
"""From this many elements in an N x dim array on (32,768 patches at dim 512), the survival branch's
backward works in the forward's buffers (gate gradients over the gate activations, the input gradient
over the patch embeddings) instead of new N x dim arrays: lower peak memory for large bags, at the cost
of an extra pass. A second backward through the same graph (``retain_graph=True``) then raises
autograd's in-place error instead of reusing stale values."""


class _HyperPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, w_ab, b_ab, w_c, b_c, genomic, p: float, scale: float):  # type: ignore[override]
        hidden = w_ab.shape[0] // 2
        hp = y.relu_()                                     # hp = scale * (this): scale kept out of N x dim
        if scale != 1.0:
            apply_keep_(hp, p, 1.0)
        ctx.mark_dirty(y)
        ab = torch.addmm(b_ab, hp, w_ab.T, alpha=scale)   # gate pre-activations, then [tanh(a) | sigmoid(b)]
        t = ab[:, :hidden].tanh_()
        sg = ab[:, hidden:].sigmoid_()
        score = torch.addmv(b_c, t * sg, w_c.reshape(-1))
        w_mor = score.softmax(dim=0)
        hyper = (genomic + w_mor) * 0.5
        pooled = (hyper @ hp).mul_(scale)
        ctx.scale = scale
        ctx.save_for_backward(hp, ab, w_ab, w_c, w_mor, hyper)
        ctx.mark_non_differentiable(hp)
        ctx.set_materialize_grads(False)                   # no N x dim zeros for the unused outputs
        return pooled, w_mor, hp

    @staticmethod
    def backward(ctx, d_pooled, d_wmor, _):  # type: ignore[override]
        hp, ab, w_ab, w_c, w_mor, hyper = ctx.saved_tensors
        scale, hidden = ctx.scale, w_ab.shape[0] // 2
        n, dim = hp.shape
        if d_pooled is None:
            d_pooled = torch.zeros(hyper.shape[0], dim, dtype=hp.dtype, device=hp.device)
        dxs = d_pooled * scale
        # w_mor enters pooled through hyper = (genomic + w_mor) / 2 (genomic is a constant)
        dw = hp @ (dxs.sum(dim=0) * 0.5)
        if d_wmor is not None:
            dw.add_(d_wmor)
        ds = (w_mor * (dw - (w_mor * dw).sum()))[:, None]        # softmax backward (N, 1)
        t, sg = ab[:, :hidden], ab[:, hidden:]
        wc = w_c.reshape(1, -1)
        d_bc = ds.sum().reshape(1)
        # g = t sg, d g = ds wc, d a = d g sg (1 - t^2), d b = d g g (1 - sg)
        if ab.shape == hp.shape and n * dim >= REUSE_MIN_ELEMENTS:
            return _hyper_in_place(hp, ab, t, sg, ds, wc, w_c, w_ab, hyper, dxs, scale, d_bc)
        # [d_a | d_b | hyper^T] (N, 2H + G): gate pre-activation gradients and the pooling's weights
        dab = torch.empty(n, 2 * hidden + hyper.shape[0], dtype=hp.dtype, device=hp.device)
        da, db = dab[:, :hidden], dab[:, hidden:2 * hidden]
        g = torch.mul(t, sg, out=da)                              # g, held in d_a's place for now
        d_wc = (g.T @ ds).reshape(w_c.shape)
        torch.sub(1.0, sg, out=db).mul_(g).mul_(ds).mul_(wc)
        torch.mul(t, t, out=da).neg_().add_(1.0).mul_(sg).mul_(ds).mul_(wc)
        dab[:, 2 * hidden:] = hyper.T
        d_ab = dab[:, :2 * hidden]
        d_wab = (d_ab.T @ hp).mul_(scale)
        d_bab = d_ab.sum(dim=0)
        d_hp = dab @ torch.cat([w_ab * scale, dxs])               # gate + pooling input gradient, one product
        mult = torch.sign(hp, out=dab.view(-1)[:n * dim].view(n, dim))   # dab's memory is free again
        d_hp.mul_(mult)                                           # ReLU and dropout
        return d_hp, d_wab, d_bab, d_wc, d_bc, None, None, None


def _hyper_in_place(hp, ab, t, sg, ds, wc, w_c, w_ab, hyper, dxs, scale: float, d_bc):
    """Large-bag backward of :class:`_HyperPool` in the forward's buffers (see ``REUSE_MIN_ELEMENTS``),
    per block of rows so that temporaries stay small."""
    rows = max(1, BLOCK_ELEMENTS // hp.shape[1])
    d_wc = torch.zeros_like(ds[:1].T @ t[:1]).reshape(-1)
    for t_b, sg_b, ds_b in zip(t.split(rows), sg.split(rows), ds.split(rows), strict=True):
        tmp = torch.mul(t_b, sg_b)                                               # g
        d_wc.addmv_(tmp.T, ds_b.reshape(-1))
        torch.mul(t_b, t_b, out=tmp).neg_().add_(1.0).mul_(sg_b).mul_(ds_b).mul_(wc)   # d a
        sg_b.addcmul_(sg_b, sg_b, value=-1.0).mul_(t_b).mul_(ds_b).mul_(wc)            # d b over sigmoid(b)
        t_b.copy_(tmp)                                                           # d a over tanh(a)
    d_wab = (ab.T @ hp).mul_(scale)
    d_bab = ab.sum(dim=0)
    w_gate, hyper_t = w_ab * scale, hyper.T
    for hp_b, ab_b, hy_b in zip(hp.split(rows), ab.split(rows), hyper_t.split(rows), strict=True):
        passes = hp_b > 0                                         # ReLU and dropout
        torch.mm(ab_b, w_gate, out=hp_b)                          # the gate's input gradient over hp ...
        hp_b.addmm_(hy_b, dxs).mul_(passes)                       # ... + the pooling's
    return hp, d_wab, d_bab, d_wc.reshape(w_c.shape), d_bc, None, None, None


def hyper_pool(y: torch.Tensor, gate, genomic: torch.Tensor, p: float, training: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Survival-branch patch side after its LayerNorm ``y`` (N, dim, overwritten): ``hp = dropout(relu(y))``;
    gated-attention weights ``w_mor = softmax(gate(hp))`` (N,); pooled ``((genomic + w_mor) / 2) @ hp``
    (G, dim). ``genomic`` (G, N) is a constant (no gradient). Returns ``(pooled, w_mor)``.

    The dropout mask is drawn like :class:`~ghanet_pipeline.models.layers.ReLUDropout`'s. Under autocast
    (``train --precision bf16``) it runs in float32 with autocast off: its hand-written kernels take one dtype.
    """
    if torch.is_autocast_enabled(y.device.type):
        with torch.autocast(y.device.type, enabled=False):
            return hyper_pool(y.float(), gate, genomic.float(), p, training)
    scale = 1.0 / (1.0 - p) if training and p > 0.0 else 1.0
    w_ab = torch.cat([gate.attention_a.weight, gate.attention_b.weight])
    b_ab = torch.cat([gate.attention_a.bias, gate.attention_b.bias])
    pooled, w_mor, _ = _HyperPool.apply(y, w_ab, b_ab, gate.attention_c.weight, gate.attention_c.bias,
                                        genomic.detach(), p, scale)
    return pooled, w_mor


def cross_pass(qk: torch.Tensor, context: torch.Tensor, p: float, training: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One cross-attention pass (see :class:`CrossPass`): ``(scores (rows, N), pooled (rows, dim))``; in float32
    with autocast off under autocast (like :func:`hyper_pool`)."""
    if torch.is_autocast_enabled(qk.device.type):
        with torch.autocast(qk.device.type, enabled=False):
            return CrossPass.apply(qk.float(), context.float(), p, training)
    return CrossPass.apply(qk, context, p, training)
