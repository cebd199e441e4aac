"""models/patch_ops.py: hand-written backward passes checked against finite differences (float64).

Dropout is off here (gradcheck needs a deterministic function); with dropout the fast model is compared
with the module-by-module reference, outputs and every gradient, in tests/test_models.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ghanet_pipeline.models.layers import GatedAttention
from ghanet_pipeline.models.patch_ops import cab_context, cross_pass, drop_mask, hyper_pool

torch.set_num_threads(1)


def _params(*modules):
    for m in modules:
        m.double()
        for p in m.parameters():
            with torch.no_grad():
                p.add_(torch.randn_like(p) * 0.3)   # LayerNorm starts at (1, 0): move it off the identity


def test_hyper_pool_gradients_match_finite_differences_for_both_outputs():
    torch.manual_seed(0)
    n, dim, g = 9, 6, 3
    norm, gate = nn.LayerNorm(dim), GatedAttention(dim, dim // 2)
    _params(norm, gate)
    hp_pre = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    genomic = torch.rand(g, n, dtype=torch.float64).softmax(dim=1)

    def f(x, *params):
        (norm.weight, norm.bias, gate.attention_a.weight, gate.attention_b.weight, gate.attention_c.weight,
         gate.attention_c.bias) = params
        return hyper_pool(x, norm, gate, genomic, 0.0, True)

    params = [nn.Parameter(t.detach().clone()) for t in (norm.weight, norm.bias, gate.attention_a.weight,
                                                         gate.attention_b.weight, gate.attention_c.weight,
                                                         gate.attention_c.bias)]
    for name in ("weight", "bias"):
        delattr(norm, name)
    for lin in (gate.attention_a, gate.attention_b, gate.attention_c):
        delattr(lin, "weight")
    assert torch.autograd.gradcheck(f, (hp_pre, *params), eps=1e-6, atol=1e-6)


def test_cab_context_and_cross_pass_gradients_match_finite_differences():
    torch.manual_seed(1)
    n, dim, rows = 11, 8, 4
    h_pre = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    qk = torch.randn(rows, dim, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.3 * torch.randn(dim, dtype=torch.float64)).requires_grad_()
    b = (0.3 * torch.randn(dim, dtype=torch.float64)).requires_grad_()
    norm = nn.LayerNorm(dim).double()

    def f(h_pre, qk, w, b):
        del norm.weight, norm.bias
        norm.weight, norm.bias = w, b
        context = cab_context(h_pre, norm, 0.0, True)
        scores, pooled = cross_pass(qk, context, 0.0, True)
        scores2, pooled2 = cross_pass(pooled * 0.5 + qk, context, 0.0, True)   # context used twice
        return scores, pooled2, scores2.sin()

    assert torch.autograd.gradcheck(f, (h_pre, qk, w, b), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_drop_mask_rate_and_independence(p):
    torch.manual_seed(2)
    m = drop_mask(torch.Size([300, 400]), p)
    assert m.dtype == torch.bool and m.shape == (300, 400)
    assert m.float().mean().item() == pytest.approx(p, abs=0.005)
    # neighbouring elements come from the same 64-bit word: they must still be uncorrelated
    a, b = m[:, 0::2].float(), m[:, 1::2].float()
    assert ((a * b).mean() - a.mean() * b.mean()).abs().item() < 0.005
