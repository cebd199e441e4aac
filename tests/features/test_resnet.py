"""Our ResNet50 is torchvision's: same keys and shapes, same random weights for a seed, same outputs."""

from __future__ import annotations

import pytest
import torch

from ghanet_pipeline.features.resnet import resnet50


def test_same_state_dict_and_forward_as_torchvision():
    from torchvision.models import resnet50 as tv_resnet50

    torch.manual_seed(0)
    ours = resnet50().eval()
    torch.manual_seed(0)
    ref = tv_resnet50(weights=None).eval()
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(ours(x), ref(x))


@pytest.mark.slow  # starts Python processes (each imports torch)
def test_extraction_does_not_import_torchvision():
    import subprocess
    import sys

    code = ("import sys; from ghanet_pipeline.features.encoders import load_encoder; "
            "load_encoder('resnet50_trunc', 'random'); print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
