"""Plain, unoptimised G-HANet forward pass, written as the paper/released code state it.

Used by the tests (the fast :class:`GHANet` forward must give the same numbers) and by
``benchmarks/bench_train_step.py`` as the baseline: keys and values projected for every patch in
each of the two cross-attention passes, a dense masked softmax (-1e5 outside the top-k) for the genomic
weights, and optionally ReLU + ``F.dropout`` for the patch embeddings. Same parameters as the fast model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ghanet import GHANet, topk_count
from .layers import survival_outputs


def reference_forward(model: GHANet, features: torch.Tensor, plain_dropout: bool = False) -> dict:
    """Textbook forward of ``model`` (same outputs as ``model(features)``; O(N dim^2) attention cost).

    ``plain_dropout=True`` uses ``F.dropout(F.relu(x))`` for the patch embeddings as the released code
    does (other random masks than the fused :class:`ReLUDropout`, so train-mode outputs then differ).
    """
    cab, hsb = model.cab, model.hsb

    def act(module, x):
        if plain_dropout:
            return F.dropout(F.relu(x), module.p, training=module.training)
        return module(x)

    h = act(cab.embed_act, cab.embed(features))
    r1, _ = cab.mhca.forward_reference(cab.norm_tokens(cab.tokens), cab.norm_patches(h))
    r1 = cab.ffn1(cab.norm_ffn1(r1)) + r1
    r2, scores = cab.mhca.forward_reference(cab.norm_query2(cab.tokens + r1), cab.norm_patches(h))
    r2 = cab.norm_out(cab.ffn2(cab.norm_ffn2(r2)) + r2)
    assoc = scores.mean(dim=0)
    recon = [cab.recon_heads[str(i)](r2[i]) if str(i) in cab.recon_heads else None
             for i in range(len(cab.family_sizes))]

    hp = act(hsb.embed_act, hsb.embed_norm(hsb.embed(features)))
    gate = hsb.gate
    w_mor = gate.attention_c(torch.tanh(gate.attention_a(hp)) * torch.sigmoid(gate.attention_b(hp)))
    w_mor = F.softmax(w_mor.T, dim=1)                                           # (1, N)
    k = topk_count(assoc.shape[1], hsb.topk, hsb.topk_rule)   # released code: int(N * ratio)
    kth = torch.topk(assoc, k, dim=1)[0][:, -1:]
    keep = (assoc >= kth).float()
    genomic = F.softmax(assoc + (1 - keep) * -1e5, dim=1).detach()
    x = ((w_mor + genomic) / 2) @ hp
    f = ((x + hsb.hyper(x)) + r2) / 2
    f = hsb.mhsa(f) + f
    f = hsb.ffn(hsb.norm_ffn(f)) + f
    logits = hsb.classifier(hsb.compress(f).view(1, -1))
    out = survival_outputs(logits)
    out.update(recon=recon, assoc=assoc.detach(), w_mor=w_mor[0].detach())
    return out
