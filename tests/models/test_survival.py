"""survival.py: NLL and SCE against hand-computed values, risk and survival curves."""

from __future__ import annotations

import math

import pytest
import torch

from ghanet_pipeline.models.survival import (
    nll_loss,
    risk_from_survival,
    sce_loss,
    survival_from_hazards,
)

H = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
S = torch.cumprod(1 - H, dim=1)          # 0.9, 0.72, 0.504, 0.3024


def test_nll_uncensored_hand_computed():
    # event in bin 2: alive through bins 0-1 (S_pad[2] = S[1] = 0.72), event in bin 2 (h = 0.3)
    loss = nll_loss(H, S, torch.tensor([2]), torch.tensor([0]))
    assert loss.item() == pytest.approx(-(math.log(0.72) + math.log(0.3)), rel=1e-12)


def test_nll_censored_hand_computed():
    # censored in bin 1: alive after bin 1 (S_pad[2] = 0.72); the hazard of bin 1 does not enter
    loss = nll_loss(H, S, torch.tensor([1]), torch.tensor([1]))
    assert loss.item() == pytest.approx(-math.log(0.72), rel=1e-12)


def test_nll_first_bin_and_batch_mean_and_int_labels():
    # y = 0, event: S_pad[0] = 1 so only -log h[0]; batch mean with a censored case in the last bin
    h2 = torch.cat([H, H])
    s2 = torch.cat([S, S])
    loss = nll_loss(h2, s2, [0, 3], [0, 1])
    expected = (-math.log(0.1) + -math.log(0.3024)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_nll_alpha_weights_uncensored_term():
    h2, s2 = torch.cat([H, H]), torch.cat([S, S])
    unc = -(math.log(0.72) + math.log(0.3))     # case 0: event in bin 2
    cen = -math.log(0.504)                      # case 1: censored in bin 2
    for alpha in (0.0, 0.4, 1.0):
        loss = nll_loss(h2, s2, [2, 2], [0, 1], alpha=alpha)
        per_case = [(1 - alpha) * unc + alpha * unc, (1 - alpha) * cen + alpha * 0.0]
        assert loss.item() == pytest.approx(sum(per_case) / 2, rel=1e-12)


def test_nll_clamps_zero_probabilities():
    h = torch.tensor([[0.0, 1.0, 0.5, 0.5]])
    s = torch.cumprod(1 - h, dim=1)             # 1, 0, 0, 0
    loss = nll_loss(h, s, [0], [0])             # log(h[0] = 0) -> log(1e-7)
    assert loss.item() == pytest.approx(-math.log(1e-7), rel=1e-5)
    loss = nll_loss(h, s, [2], [1])             # log(S[2] = 0) -> log(1e-7)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(-math.log(1e-7), rel=1e-5)


def test_nll_gradient_direction():
    logits = torch.zeros(1, 4, requires_grad=True)
    h = torch.sigmoid(logits)
    nll_loss(h, torch.cumprod(1 - h, 1), [1], [0]).backward()
    g = logits.grad[0]
    assert g[1] < 0 and g[0] > 0 and g[2] == 0 and g[3] == 0   # raise h[1], lower h[0], ignore later bins


def test_sce_hand_computed():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert sce_loss(a, b).item() == pytest.approx(1.0)                     # orthogonal: (1 - 0)^3
    assert sce_loss(a, -3 * a).item() == pytest.approx(8.0)                # opposite: 2^3
    assert sce_loss(a, 5 * a).item() == pytest.approx(0.0, abs=1e-7)       # same direction, any scale
    c = torch.tensor([1.0, 1.0])
    assert sce_loss(c, a).item() == pytest.approx((1 - 1 / math.sqrt(2)) ** 3, rel=1e-6)
    assert sce_loss(c, a, gamma=1.0).item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
    # rows are separate vectors; mean over rows
    batch = sce_loss(torch.stack([a, c]), torch.stack([b, a]))
    assert batch.item() == pytest.approx((1.0 + (1 - 1 / math.sqrt(2)) ** 3) / 2, rel=1e-6)


def test_risk_and_survival_from_hazards():
    assert torch.allclose(survival_from_hazards(H), S)
    assert risk_from_survival(survival_from_hazards(H)).item() == pytest.approx(-(0.9 + 0.72 + 0.504 + 0.3024))
    low, high = torch.full((1, 4), 0.05), torch.full((1, 4), 0.5)
    assert risk_from_survival(survival_from_hazards(high)) > risk_from_survival(survival_from_hazards(low))
