"""The folded encoder (normalisation + batch norms inside the convolutions) computes model(preprocess(x))."""

from __future__ import annotations

import pytest
import torch

from ghanet_pipeline.features.encoders import load_encoder, preprocess
from ghanet_pipeline.features.fastpath import Runner, fold_resnet_trunk


@pytest.fixture(scope="module")
def encoder():
    enc = load_encoder("resnet50_trunc", "random:3")
    g = torch.Generator().manual_seed(1)
    for m in enc.model.modules():  # trained-like batch-norm statistics (random init has mean 0, var 1)
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return enc


def test_folded_runner_equals_plain_model_up_to_round_off(encoder):
    # saturated and dark pixels at the border: the padding fill (255 * mean) matters there
    u = torch.randint(0, 256, (3, 72, 72, 3), dtype=torch.uint8)
    u[0, :4] = 0
    u[1, :, -4:] = 255
    runner = Runner(encoder.model, encoder.spec, torch.device("cpu"))
    assert runner.folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in runner.model.modules())
    with torch.inference_mode():
        want = encoder.model(preprocess(u, encoder.spec))
        got = runner(u)
        again = runner(u[:2])  # smaller last batch reuses the buffer
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-5 * scale
    assert torch.equal(again, got[:2]) or (again - got[:2]).abs().max() <= 1e-6 * scale
    # the original model is untouched
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.model.modules())


def test_zero_padding_without_the_fill_would_differ(encoder):
    """Control: padding the raw pixels with 0 (the naive fold) is not the same function at the border."""
    folded, pad, fill = fold_resnet_trunk(encoder.model, encoder.spec)
    assert pad == 3 and fill[0] == pytest.approx(255 * 0.485)
    u = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    x = u.permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        naive = folded(torch.nn.functional.pad(x, (pad,) * 4))
        want = encoder.model(preprocess(u, encoder.spec))
    assert (naive - want).abs().max() > 1e-3 * want.abs().max()


def test_other_models_fall_back_to_plain_preprocess(encoder):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(1)).eval()
    runner = Runner(model, encoder.spec, torch.device("cpu"))
    u = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    assert not runner.folded
    with torch.inference_mode():
        assert torch.equal(runner(u), model(preprocess(u, encoder.spec)))
