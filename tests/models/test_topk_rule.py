"""Top-k rule of the genomic weights: ours (ceil, exactly k) vs the authors' released code (floor + ties)."""

from __future__ import annotations

import math

import pytest
import torch

from ghanet_pipeline.core.errors import ConfigError, InputError
from ghanet_pipeline.models import create_model, genomic_weights, topk_count
from ghanet_pipeline.models.reference import reference_forward

TINY = dict(in_dim=16, family_sizes=[3, 0, 4], n_bins=4, dim=32, heads=2, dropout=0.25, topk=0.2)


# Hand-worked: the released code computes int(length * ratio) in float64.
# 0.3 * 10 = 3.0000000000000004 -> 3; 0.29 * 100 = 28.999999999999996 -> 28 (not 29).
@pytest.mark.parametrize("n,ratio,expected", [(4, 0.2, 0), (5, 0.2, 1), (9, 0.2, 1), (10, 0.2, 2), (14, 0.2, 2),
                                              (20, 0.15, 3), (6, 0.15, 0), (7, 0.15, 1), (10, 0.3, 3),
                                              (100, 0.29, 28), (3, 1.0, 3)])
def test_floor_rule_counts(n, ratio, expected):
    assert topk_count(n, ratio, "floor") == expected


@pytest.mark.parametrize("n,ratio,expected", [(4, 0.2, 1), (9, 0.2, 2), (6, 0.15, 1), (100, 0.29, 29)])
def test_ceil_rule_counts_differ_where_floor_rounds_down(n, ratio, expected):
    assert topk_count(n, ratio) == topk_count(n, ratio, "ceil") == expected


def test_unknown_rule_is_a_config_error():
    with pytest.raises(ConfigError, match="floor"):
        topk_count(10, 0.2, "round")
    with pytest.raises(ConfigError, match="topk_rule"):
        create_model("ghanet", **TINY, topk_rule="round")


def test_floor_rule_keeps_ties_hand_worked():
    # N = 5, ratio 0.4 -> k = int(2.0) = 2; the 2nd highest score is 2.0 and appears twice -> 3 patches kept
    assoc = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0],
                          [0.0, 0.5, 0.5, 0.5, 0.5]])
    w = genomic_weights(assoc, 0.4, "floor")
    e = math.e
    den = e ** 3 + 2 * e ** 2
    expected0 = [e ** 3 / den, 0.0, e ** 2 / den, e ** 2 / den, 0.0]
    assert w[0].tolist() == pytest.approx(expected0, abs=1e-6)
    assert w[1].tolist() == pytest.approx([0.0, 0.25, 0.25, 0.25, 0.25], abs=1e-6)   # four-way tie: all kept
    ours = genomic_weights(assoc, 0.4)                                             # ceil: exactly 2
    assert ((ours > 0).sum(dim=1) == 2).all()


def test_floor_rule_selecting_nothing_is_a_clear_error_not_a_crash():
    with pytest.raises(InputError, match=r"N=4 .*N >= 5.*ghanet protocol"):
        genomic_weights(torch.randn(2, 4), 0.2, "floor")
    torch.manual_seed(0)
    model = create_model("ghanet", **{**TINY, "topk_rule": "floor"})
    with pytest.raises(InputError, match="N >= 5"):
        model(torch.randn(4, 16))
    assert torch.isfinite(create_model("ghanet", **TINY)(torch.randn(4, 16))["risk"]).all()   # ceil: fine


def test_floor_rule_model_matches_the_reference_forward_and_records_the_rule():
    torch.manual_seed(0)
    model = create_model("ghanet", **{**TINY, "topk_rule": "floor"}).eval()
    assert model.config["topk_rule"] == "floor"
    assert create_model("ghanet", **TINY).config["topk_rule"] == "ceil"
    feats = torch.randn(14, 16)                         # floor: int(2.8) = 2 patches, ceil would keep 3
    with torch.no_grad():
        fast, ref = model(feats), reference_forward(model, feats)
    assert torch.allclose(fast["logits"], ref["logits"], atol=1e-5)
    g = genomic_weights(fast["assoc"], 0.2, "floor")
    assert ((g > 0).sum(dim=1) == 2).all()
