"""Encoder registry, weights resolution and the input transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ghanet_pipeline.core.errors import ConfigError
from ghanet_pipeline.features.encoders import (
    ENCODERS,
    get_encoder_spec,
    load_encoder,
    parse_random,
    preprocess,
    resolve_weights,
)


@pytest.fixture(scope="module")
def random_encoder():
    return load_encoder("resnet50_trunc", "random:3")


def test_registry_knows_resnet50_trunc():
    spec = get_encoder_spec("resnet50_trunc")
    assert spec.dim == 1024 and "resnet50_trunc" in ENCODERS
    with pytest.raises(ConfigError, match="known encoders: .*resnet50_trunc"):
        get_encoder_spec("resnet51")


def test_parse_random():
    assert parse_random("random") == 0 and parse_random("random:7") == 7
    assert parse_random("/x/random.pth") is None and parse_random(None) is None


def test_trunk_is_conv1_to_layer3_with_1024_outputs(random_encoder):
    enc = random_encoder
    assert enc.weights_id == "random:3"
    names = {n.split(".")[0] for n, _ in enc.model.named_parameters()}
    # Sequential indices: conv1, bn1, (relu, maxpool), layer1..layer3 -> no layer4 / fc weights
    assert sum(p.numel() for p in enc.model.parameters()) == 8_543_296  # resnet50 params up to layer3
    assert not enc.model.training and names
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        f = enc.model(preprocess(x, enc.spec))
    assert f.shape == (2, 1024) and torch.isfinite(f).all()


def test_random_weights_are_seeded():
    a = load_encoder("resnet50_trunc", "random:3").model.state_dict()
    b = load_encoder("resnet50_trunc", "random:3").model.state_dict()
    c = load_encoder("resnet50_trunc", "random:4").model.state_dict()
    k = "0.weight"  # conv1
    assert torch.equal(a[k], b[k]) and not torch.equal(a[k], c[k])


def test_preprocess_normalises_with_imagenet_stats_channels_last():
    spec = get_encoder_spec("resnet50_trunc")
    x = torch.zeros((1, 4, 4, 3), dtype=torch.uint8)
    x[..., 0] = 255
    y = preprocess(x, spec)
    assert y.shape == (1, 3, 4, 4) and y.is_contiguous(memory_format=torch.channels_last)
    expect = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    np.testing.assert_allclose(y[0, :, 0, 0].numpy(), expect, rtol=1e-5)


def test_weights_file_is_loaded_and_hashed(tmp_path, random_encoder):
    from torchvision.models import resnet50

    torch.manual_seed(1)
    full = resnet50(weights=None)
    path = tmp_path / "resnet50-test.pth"
    torch.save(full.state_dict(), path)  # a full torchvision dict: layer4/fc are allowed and ignored
    enc = load_encoder("resnet50_trunc", str(path))
    assert len(enc.weights_id) == 64 and enc.weights_path == path
    assert torch.equal(enc.model.state_dict()["0.weight"], full.conv1.weight)
    assert any("layer4" in n for n in enc.notes)
    # the same weights as safetensors give the same model
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(st))
    enc2 = load_encoder("resnet50_trunc", str(st))
    assert torch.equal(enc2.model.state_dict()["4.0.conv1.weight"], full.layer1[0].conv1.weight)


def test_wrapped_state_dicts_are_unwrapped(tmp_path):
    """Training checkpoints ({"state_dict": ...}, {"model": ...}) and DataParallel "module." keys load
    as the plain state dict they hold; a file without tensors is refused naming it."""
    from torchvision.models import resnet50

    torch.manual_seed(2)
    sd = resnet50(weights=None).state_dict()
    for key in ("state_dict", "model"):
        path = tmp_path / f"{key}.pth"
        torch.save({key: {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
        enc = load_encoder("resnet50_trunc", str(path))
        assert torch.equal(enc.model.state_dict()["0.weight"], sd["conv1.weight"])
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(ConfigError, match=r"empty\.pth does not hold a state dict"):
        load_encoder("resnet50_trunc", str(empty))


def test_weights_with_wrong_keys_name_them(tmp_path):
    from torchvision.models import resnet50

    sd = resnet50(weights=None).state_dict()
    del sd["layer3.0.conv1.weight"]
    sd["head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ConfigError) as err:
        load_encoder("resnet50_trunc", str(path))
    msg = str(err.value)
    assert "missing keys: layer3.0.conv1.weight" in msg and "unexpected keys: head.weight" in msg and str(path) in msg


def test_missing_weights_error_explains_how_to_get_them(tmp_path):
    spec = get_encoder_spec("resnet50_trunc")
    with pytest.raises(ConfigError) as err:
        resolve_weights(spec, None, hub_dir=tmp_path / "hub")
    msg = str(err.value)
    assert "resnet50-0676ba61.pth" in msg and "--weights" in msg and str(tmp_path / "hub") in msg
    assert "never downloads" in msg
    with pytest.raises(ConfigError, match="no such file"):
        resolve_weights(spec, tmp_path / "nope.pth")
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        resolve_weights(spec, tmp_path)


def test_hub_cache_is_used_when_present(tmp_path, monkeypatch):
    spec = get_encoder_spec("resnet50_trunc")
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet50-11ad3fa6.pth").write_bytes(b"x")
    (hub / "resnet50-0676ba61.pth").write_bytes(b"x")
    assert resolve_weights(spec, None, hub_dir=hub).name == "resnet50-0676ba61.pth"  # V1 preferred
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert resolve_weights(spec, None).name == "resnet50-0676ba61.pth"


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "obj": _Evil()}, path)
    with pytest.raises(ConfigError, match=r"holds Python objects \(e.g. print\).*unpickling") as info:
        load_encoder("resnet50_trunc", str(path))
    assert str(path) in str(info.value) and "Weights only load failed" not in str(info.value)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))
