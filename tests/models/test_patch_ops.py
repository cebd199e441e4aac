"""models/patch_ops.py: hand-written backward passes checked against finite differences (float64).

Dropout is off here (gradcheck needs a deterministic function); with dropout the fast model is compared
with the module-by-module reference, outputs and every gradient, in tests/test_models.py.
"""

from __future__ import annotations

import pytest
import torch

from ghanet_pipeline.models.layers import GatedAttention
from ghanet_pipeline.models.patch_ops import cross_pass, hyper_pool, keep_mask


def test_hyper_pool_gradients_match_finite_differences_for_both_outputs():
    torch.manual_seed(0)
    n, dim, g = 9, 6, 3
    gate = GatedAttention(dim, dim // 2).double()
    y = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    genomic = torch.rand(g, n, dtype=torch.float64).softmax(dim=1)
    params = [gate.attention_a.weight, gate.attention_a.bias, gate.attention_b.weight, gate.attention_b.bias,
              gate.attention_c.weight, gate.attention_c.bias]

    def f(y, *weights):
        for lin, (w, b) in zip((gate.attention_a, gate.attention_b, gate.attention_c),
                               zip(weights[::2], weights[1::2], strict=True), strict=True):
            lin.weight, lin.bias = w, b
        pooled, w_mor = hyper_pool(y.clone(), gate, genomic, 0.0, True)   # y.clone(): it is overwritten
        return pooled, w_mor.exp()                        # a non-constant gradient into w_mor too

    inputs = [t.detach().clone().requires_grad_() for t in params]
    for lin in (gate.attention_a, gate.attention_b, gate.attention_c):
        del lin.weight, lin.bias
    assert torch.autograd.gradcheck(f, (y, *inputs), eps=1e-6, atol=1e-6)


def test_cross_pass_gradients_match_finite_differences():
    torch.manual_seed(1)
    n, dim, rows = 11, 8, 4
    context = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    qk = torch.randn(rows, dim, dtype=torch.float64, requires_grad=True)

    def f(context, qk):
        scores, pooled = cross_pass(qk, context, 0.0, True)
        scores2, pooled2 = cross_pass(pooled * 0.5 + qk, context, 0.0, True)   # context used twice
        return scores, pooled2, scores2.sin()

    assert torch.autograd.gradcheck(f, (context, qk), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keep_mask_rate_values_and_independence(p):
    torch.manual_seed(2)
    m = keep_mask(torch.Size([300, 400]), p)
    assert m.dtype == torch.float32 and m.shape == (300, 400)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert m.mean().item() == pytest.approx(1 - p, abs=0.005)
    # neighbouring elements come from the same 64-bit word: they must still be uncorrelated
    a, b = m[:, 0::2], m[:, 1::2]
    assert ((a * b).mean() - a.mean() * b.mean()).abs().item() < 0.005
    torch.manual_seed(2)
    scaled = keep_mask(torch.Size([300, 400]), p, 1 / (1 - p))
    assert torch.equal(scaled, m / (1 - p))                 # same draw, exact values 0 and 1/(1-p)


def test_relu_dropout_in_place_equals_out_of_place_with_gradients():
    from ghanet_pipeline.models.layers import ReLUDropout

    lin = torch.nn.Linear(7, 300)
    x = torch.randn(50, 7)
    results = []
    for inplace in (False, True):
        lin.zero_grad()
        torch.manual_seed(3)
        y = ReLUDropout(0.25, inplace=inplace).train()(lin(x))
        (y * torch.arange(300.0)).sum().backward()
        results.append((y.detach(), lin.weight.grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.allclose(results[0][1], results[1][1])
    assert (results[0][0] == 0).float().mean().item() == pytest.approx(1 - 0.5 * 0.75, abs=0.02)
