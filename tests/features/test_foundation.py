"""Pathology foundation models in the encoder registry: shapes, weights files, key checks, any feature width.

Shape checks run on the ``meta`` device (no memory, seconds), at each card's input size. Building each
model at full size with random weights and a real 2-patch forward through all its blocks (on a 4 x 4-patch
input, so the ViT-g models take seconds, not half a minute) is ``slow`` (1.1 B parameters for the ViT-g
models: built one at a time and freed).
"""

from __future__ import annotations

import gc
import time

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.core.errors import ConfigError
from ghanet_pipeline.features import foundation
from ghanet_pipeline.features.encoders import ENCODERS, _random_strict, get_encoder_spec, load_encoder, preprocess, resolve_weights

#: name -> (feature width, input px, parameters in millions (from the model cards: UNI 303M, UNI2-h 681M,
#: Virchow2 632M, H-optimus 1.1B, GigaPath 1.13B, Phikon-v2 ViT-L 303M, CONCH v1.5 ViT-L + pooler))
EXPECTED = {
    "uni": (1024, 224, 303.4), "uni2_h": (1536, 224, 681.4), "virchow2": (2560, 224, 631.2),
    "hoptimus0": (1536, 224, 1134.8), "hoptimus1": (1536, 224, 1134.8), "gigapath": (1536, 224, 1135.0),
    "phikon_v2": (1024, 224, 303.4), "conch_v15": (768, 448, 306.1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_architecture_shapes_on_meta(name):
    """Full-size architecture: parameter count as on the card, output width from a 2-patch forward."""
    dim, size, params_m = EXPECTED[name]
    spec = get_encoder_spec(name)
    assert (spec.dim, spec.default_input_size, spec.input_mpp) == (dim, size, 0.5)
    assert spec.hf_repo and spec.weight_files and spec.strict and spec.card_url.endswith(spec.hf_repo)
    with torch.device("meta"):
        full = spec.build()
        n = sum(p.numel() for p in full.parameters())
        out = spec.trunk(full).eval()(torch.empty(2, 3, size, size))
    assert n / 1e6 == pytest.approx(params_m, abs=0.1)
    assert tuple(out.shape) == (2, dim)


def test_normalisation_per_card():
    for name in ("hoptimus0", "hoptimus1"):
        spec = get_encoder_spec(name)
        assert spec.mean == (0.707223, 0.578729, 0.703617) and spec.std == (0.211883, 0.230117, 0.177517)
    for name in ("uni", "uni2_h", "virchow2", "gigapath", "phikon_v2", "conch_v15"):
        assert get_encoder_spec(name).mean == (0.485, 0.456, 0.406)


#: patches per side of the numeric forward below: 4 x 4 patch tokens (+ prefix tokens) instead of the card
#: size's 14 x 14 / 16 x 16 / 28 x 28; the card size itself runs through every block in
#: test_architecture_shapes_on_meta, and numerically (UNI, 224 px) in test_extract_features_with_a_uni_weights_file
SMALL_GRID = 4


def _small_input(model: torch.nn.Module) -> int:
    """Side (px) of a ``SMALL_GRID`` x ``SMALL_GRID``-patch input for ``model``; a timm ViT with a fixed
    position grid gets it resampled to that grid (``set_input_size``): every parameter but ``pos_embed`` stays."""
    from timm.models.vision_transformer import VisionTransformer

    vit = next(m for m in model.modules() if isinstance(m, VisionTransformer))
    px = SMALL_GRID * vit.patch_embed.patch_size[0]
    if model is vit and not vit.dynamic_img_size:  # Virchow2 / UNI / UNI2-h interpolate; CONCH does its own
        vit.set_input_size(img_size=(px, px))
    return px


@pytest.mark.slow
@pytest.mark.threads(2)  # full-size ViTs: big matrix products, where a second thread helps
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_size_random_forward_two_patches(name, capsys):
    """Every registry entry builds at full size with --weights random (parameter count as on the card) and
    embeds 2 patches on CPU through all its blocks: card width, finite, different patches differ."""
    dim, _, params_m = EXPECTED[name]
    t0 = time.perf_counter()
    enc = load_encoder(name, "random:5")
    t1 = time.perf_counter()
    assert enc.weights_id == "random:5"
    assert sum(p.numel() for p in enc.model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.1)
    assert all(torch.isfinite(p).all() for p in enc.model.parameters())
    size = _small_input(enc.model)
    x = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    with torch.inference_mode():
        f = enc.model(preprocess(x, enc.spec))
    t2 = time.perf_counter()
    assert f.shape == (2, dim) and torch.isfinite(f).all()
    assert not torch.allclose(f[0], f[1])  # different patches, different features
    with capsys.disabled():
        print(f"\n{name}: build {t1 - t0:.1f} s, 2-patch forward ({size} px) {t2 - t1:.1f} s")
    del enc, f
    gc.collect()


def test_virchow2_output_is_cls_and_mean_patch_tokens():
    """The Virchow2 trunk concatenates the class token and the mean of the patch tokens (registers skipped)."""
    import timm

    tiny = timm.create_model("vit_tiny_patch16_224", img_size=32, reg_tokens=4, global_pool="", num_classes=0)
    trunk = foundation._cls_mean_trunk(tiny).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = tiny.forward_features(x)
        got = trunk(x)
    assert tokens.shape[1] == 1 + 4 + 4
    torch.testing.assert_close(got, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1))


def _timm_to_hf_dinov2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of foundation.dinov2_hf_to_timm, written independently for the round trip."""
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
           "embeddings.mask_token": torch.zeros(1, sd["cls_token"].shape[-1]),
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    n = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(n):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = sd[b + f"attn.qkv.{leaf}"].chunk(3, dim=0)
            out |= {h + f"attention.attention.query.{leaf}": q, h + f"attention.attention.key.{leaf}": k,
                    h + f"attention.attention.value.{leaf}": v,
                    h + f"attention.output.dense.{leaf}": sd[b + f"attn.proj.{leaf}"]}
            for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[h + f"{part}.{leaf}"] = sd[b + f"{part}.{leaf}"]
        out[h + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    return out


def test_phikon_v2_hf_keys_map_onto_timm():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, init_values=1e-5, num_classes=0)
    sd = vit.state_dict()
    back = foundation.dinov2_hf_to_timm(_timm_to_hf_dinov2(sd))
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    assert foundation.dinov2_hf_to_timm(sd) is sd  # timm naming passes through


def test_phikon_v2_matches_transformers_dinov2():
    """The timm build with mapped keys computes what transformers' Dinov2Model computes (when installed)."""
    transformers = pytest.importorskip("transformers")
    import timm

    cfg = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4,
                                    image_size=32, patch_size=16, layerscale_value=1e-5, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    hf = transformers.Dinov2Model(cfg).eval()
    vit = timm.create_model("vit_large_patch16_224", img_size=32, patch_size=16, embed_dim=64, depth=2,
                            num_heads=4, init_values=1e-5, num_classes=0).eval()
    vit.load_state_dict(foundation.dinov2_hf_to_timm(hf.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit(x), hf(pixel_values=x).last_hidden_state[:, 0], atol=1e-5, rtol=1e-4)


def test_conch_pos_embed_saved_for_another_grid_is_resized():
    pos = torch.randn(1, 1 + 32 * 32, 1024)
    got = foundation._conch_v15_convert({"trunk.pos_embed": pos, "x": torch.zeros(1)})
    assert got["trunk.pos_embed"].shape == (1, 197, 1024) and torch.equal(got["trunk.pos_embed"][:, 0], pos[:, 0])


def test_weights_file_keys_are_checked_and_named(tmp_path):
    """A UNI state dict with missing and unexpected keys is refused, naming them; wrong shapes too."""
    path = tmp_path / "pytorch_model.bin"
    torch.save({"cls_token": torch.zeros(1, 1, 1024), "pos_embed": torch.zeros(1, 197, 1024),
                "head.weight": torch.zeros(2, 1024)}, path)
    with pytest.raises(ConfigError) as err:
        load_encoder("uni", str(path))
    msg = str(err.value)
    assert str(path) in msg and "missing keys: blocks.0.attn.proj.bias" in msg and "in all)" in msg
    assert "unexpected keys: head.weight" in msg and "ViT-L/16" in msg
    torch.save({"cls_token": torch.zeros(1, 1, 768)}, path)
    with pytest.raises(ConfigError, match=r"wrong shapes: cls_token \(1, 1, 768\) != \(1, 1, 1024\)"):
        load_encoder("uni", str(path))


def test_strict_weights_load_exactly(tmp_path, monkeypatch):
    """A complete weights file is adopted as is (meta build + assign), from --weights or the HF cache."""
    import timm

    from ghanet_pipeline.features import encoders as E

    spec = E.EncoderSpec(
        name="tiny_vit_test", dim=192, build=lambda: timm.create_model("vit_tiny_patch16_224", img_size=32,
                                                                       num_classes=0),
        trunk=lambda m: m, required_prefixes=("",), hub_files=(), how_to_get="get it from {hf_dir}",
        default_input_size=32, hf_repo="Org/Tiny-ViT", weight_files=("model.safetensors", "pytorch_model.bin"),
        strict=True, architecture="ViT-Ti/16")
    E.register_encoder(spec)  # undone after the test (conftest: restored_registries)
    torch.manual_seed(1)
    ref = spec.build().eval()
    snap = tmp_path / "hf" / "models--org--tiny-vit" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    torch.save({k: v.half() for k, v in ref.state_dict().items()}, snap / "pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    enc = load_encoder(spec.name, None, hub_dir=tmp_path / "none")
    assert enc.weights_path == snap / "pytorch_model.bin" and len(enc.weights_id) == 64
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.model(x), ref.half().float()(x), atol=1e-5, rtol=1e-5)
    assert all(not p.is_meta and p.dtype == torch.float32 for p in enc.model.parameters())
    from safetensors.torch import save_file

    save_file(ref.float().state_dict(), str(snap / "model.safetensors"))  # safetensors preferred
    assert resolve_weights(spec, None, hub_dir=tmp_path / "none").name == "model.safetensors"


def test_missing_weights_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ConfigError) as err:
        resolve_weights(get_encoder_spec("virchow2"), None, hub_dir=tmp_path / "hub")
    msg = str(err.value)
    assert "https://huggingface.co/paige-ai/Virchow2" in msg and "gated" in msg and "model.safetensors" in msg
    assert str(tmp_path / "hf") in msg and "models--paige-ai--Virchow2" in msg and "never downloads" in msg


def test_every_entry_accepts_random_weights_and_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("COLUMNS", "250")
    for name in ENCODERS:
        assert resolve_weights(get_encoder_spec(name), "random:2") == 2
    snap = tmp_path / "hf" / "models--MahmoodLab--UNI" / "snapshots" / "r1"
    snap.mkdir(parents=True)
    (snap / "pytorch_model.bin").write_bytes(b"x")
    res = CliRunner().invoke(cli, ["encoders"])
    assert res.exit_code == 0, res.output
    lines = {ln.split("│")[1].strip(): ln for ln in res.output.splitlines() if ln.count("│") > 3}
    assert set(EXPECTED) | {"resnet50_trunc"} <= set(lines)
    assert "2560" in lines["virchow2"] and "448" in lines["conch_v15"] and "768" in lines["conch_v15"]
    assert "pytorch_model.bin" in lines["uni"] and "not found" not in lines["uni"]
    assert "not found" in lines["gigapath"]


def test_bags_of_any_width_train_and_predict(synthetic_study, tmp_path):
    """768-wide bags (CONCH v1.5 width): the model input follows the bags; train and predict run end to end;
    bags are plain CLAM/TRIDENT-readable HDF5 (datasets features, coords); a TRIDENT features_<enc> folder
    is accepted by --features."""
    from ghanet_pipeline.demo.bags import write_synthetic_bags
    from ghanet_pipeline.models import load_checkpoint

    cohort, gdir = synthetic_study.cohort, synthetic_study.genomics
    job = tmp_path / "trident_job" / "20x_256px_0px_overlap"
    bags = write_synthetic_bags(cohort, job / "features_conch_v15", n_patches=(10, 20), dim=768, seed=4)
    with h5py.File(next(iter(bags.values())), "r") as f:  # what a CLAM/TRIDENT loader reads
        assert f["features"].shape[1] == 768 and f["coords"].shape == (f["features"].shape[0], 2)
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--features", str(tmp_path / "trident_job"), "--genomics", str(gdir),
                              "--out", str(tmp_path), "--epochs", "1", "--accum", "2", "--dim", "16", "--folds", "0",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    model, meta = load_checkpoint(tmp_path / "train" / "ghanet" / "fold_0")
    assert model.config["in_dim"] == 768
    res = runner.invoke(cli, ["predict", "--model", str(tmp_path / "train" / "ghanet"), "--features",
                              str(job / "features_conch_v15"), "--out", str(tmp_path / "pred"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "pred" / "predict" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + len(bags)  # no manifest: every bag is a case
    # two encoder folders side by side: refused, naming both
    write_synthetic_bags(cohort, job / "features_uni_v1", n_patches=5, dim=1024, seed=4)
    res = runner.invoke(cli, ["train", "--features", str(tmp_path / "trident_job"), "--genomics", str(gdir),
                              "--out", str(tmp_path / "o2"), "--epochs", "1", "--no-progress"])
    assert res.exit_code == 1 and "features_conch_v15" in res.output and "features_uni_v1" in res.output
    # a bag of another width mixed in: refused
    np_bag = np.zeros((3, 1024), np.float32)
    from ghanet_pipeline.demo.bags import bag_attrs
    from ghanet_pipeline.features.bags import write_bag

    sid = cohort.clinical.slide_id.iloc[0]
    write_bag(job / "features_conch_v15" / f"{sid}.h5", np_bag, np.zeros((3, 2), np.int64),
              {**bag_attrs(sid), "encoder": "uni"})
    res = runner.invoke(cli, ["train", "--features", str(job / "features_conch_v15"), "--genomics", str(gdir),
                              "--out", str(tmp_path / "o3"), "--epochs", "1", "--no-progress"])
    assert res.exit_code == 1 and "uni" in res.output, res.output


@pytest.mark.slow
def test_extract_features_with_a_uni_weights_file(make_synthetic_slide, tmp_path):
    """`extract-features --encoder uni --weights FILE` (a full-size file of the right shape) on CPU: the bag
    holds what the model computes, records the encoder, the file's sha256, input size and width."""
    from ghanet_pipeline.core.files import file_sha256
    from ghanet_pipeline.features.bags import read_bag
    from ghanet_pipeline.wsi.slide import Slide

    slide = make_synthetic_slide("uni_src.svs", 768, 768, mpp=0.5, seed=2)
    full = _random_strict(get_encoder_spec("uni"), 4)  # full-size, seeded; no slow truncated-normal init
    path = tmp_path / "pytorch_model.bin"
    torch.save(full.state_dict(), path)
    del full
    gc.collect()
    res = CliRunner().invoke(cli, ["extract-features", str(slide), "--out", str(tmp_path / "out"), "--encoder", "uni",
                                   "--weights", str(path), "--devices", "cpu", "--num-workers", "0",
                                   "--batch-size", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    bag = read_bag(tmp_path / "out" / "features" / "uni_224" / "uni_src.h5")
    assert bag.dim == 1024 and len(bag.coords) >= 2
    assert bag.attrs["encoder"] == "uni" and bag.attrs["input_size"] == 224
    assert bag.attrs["weights_sha256"] == file_sha256(path) and bag.attrs["feature_dim"] == 1024
    enc = load_encoder("uni", str(path))
    import cv2

    with Slide(slide) as s:
        plan = s.plan(bag.attrs["target_mpp"], bag.attrs["patch_size"])
        x, y = bag.coords[0]
        patch = cv2.resize(s.read_patch(plan, int(x), int(y)), (224, 224), interpolation=cv2.INTER_AREA)
    with torch.inference_mode():
        want = enc.model(preprocess(torch.from_numpy(patch)[None], enc.spec))[0].numpy()
    np.testing.assert_allclose(bag.features[0], want, rtol=1e-3, atol=1e-4)
