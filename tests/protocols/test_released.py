"""The released code's class-balanced loader (protocols/released.py): its draw equals a real
WeightedRandomSampler DataLoader, and the t-test groups follow the released rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ghanet_pipeline.protocols.released import balanced_class_weights, loader_risk_groups, official_loader_draw


def test_loader_draw_equals_a_real_weighted_sampler_dataloader():
    """What the released code does per fold: seed torch, iterate a DataLoader over the training split
    with WeightedRandomSampler(N / class size, N) and batch size 1."""
    from torch.utils.data import DataLoader, WeightedRandomSampler

    bins = np.array([0, 0, 1, 2, 3, 3, 3, 1, 2, 0, 2])
    cens = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0])
    for seed in (1, 7):
        cls = bins * 2 + cens
        weights = [len(cls) / float(np.sum(cls == c)) for c in cls]      # make_weights_for_balanced_classes
        torch.manual_seed(seed)
        loader = DataLoader(list(range(len(cls))), batch_size=1, sampler=WeightedRandomSampler(weights, len(weights)))
        drawn = [int(b[0]) for b in loader]
        assert official_loader_draw(bins, cens, seed).tolist() == drawn
    assert balanced_class_weights(bins, cens).tolist() == pytest.approx(weights)


def test_loader_groups_follow_the_released_rules():
    bins = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    cens = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    draw = official_loader_draw(bins, cens, 3)
    high, low = loader_risk_groups(bins, cens, 3)
    assert sorted(high.tolist()) == sorted(i for i in draw.tolist() if bins[i] < 2 and cens[i] == 0)
    assert sorted(low.tolist()) == sorted(i for i in draw.tolist() if bins[i] >= 2)
    assert len(draw) == 8 and len(set(draw.tolist())) < 8                # with replacement: repeats, gaps
