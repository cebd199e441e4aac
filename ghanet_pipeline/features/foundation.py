"""Pathology foundation models in the encoder registry, built with ``timm`` (imported on use).

Every value below comes from the model's card on the Hugging Face hub (the ``timm.create_model``
call and ``config.json`` it shows) and is cross-checked with TRIDENT's loaders
(``trident/patch_encoder_models/load.py``), which build the same models from local files; the
architecture names resolve to ``timm/models/vision_transformer.py`` (timm 1.0). Inputs are the
segment patches area-resized to ``input_size`` and normalised with the card's mean/std.

| name | card | timm architecture | input | output | width |
|---|---|---|---|---|---|
| uni | MahmoodLab/UNI | vit_large_patch16_224 | 224 | class token | 1024 |
| uni2_h | MahmoodLab/UNI2-h | vit_giant_patch14_224 (ViT-H/14, 8 registers, SwiGLU) | 224 | class token | 1536 |
| virchow2 | paige-ai/Virchow2 | vit_huge_patch14_224 (4 registers, SwiGLU) | 224 | class token + mean patch tokens | 2560 |
| hoptimus0 | bioptimus/H-optimus-0 | vit_giant_patch14_reg4_dinov2 | 224 | class token | 1536 |
| hoptimus1 | bioptimus/H-optimus-1 | vit_giant_patch14_reg4_dinov2 | 224 | class token | 1536 |
| gigapath | prov-gigapath/prov-gigapath | vit_giant_patch14_dinov2 with patch 16 | 224 | class token | 1536 |
| phikon_v2 | owkin/phikon-v2 | ViT-L/16 (DINOv2; HF keys mapped to timm) | 224 | class token | 1024 |
| conch_v15 | MahmoodLab/conchv1_5 | ViT-L/16 + attentional pooler | 448 | pooled + LayerNorm | 768 |
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

from .registry import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, register_encoder

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

#: H-optimus-0/1 normalisation (model cards' ``transforms.Normalize``; TRIDENT load.py HOptimus*)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

#: preference order of the weight files in a Hugging Face snapshot: safetensors first
_ST_THEN_BIN = ("model.safetensors", "pytorch_model.bin")


def _timm_vit(arch: str, **kwargs) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, **kwargs)``; ``mlp_layer="swiglu"`` means
    ``timm.layers.SwiGLUPacked`` with ``act_layer=torch.nn.SiLU`` (as the cards pass them)."""
    import timm
    import torch

    if kwargs.pop("mlp_layer", None) == "swiglu":
        kwargs.update(mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)
    return timm.create_model(arch, pretrained=False, **kwargs)


def _cls_trunk(model: nn.Module) -> nn.Module:
    """A timm ViT with ``num_classes=0`` and ``global_pool="token"`` already returns (B, D): the class token."""
    return model


def _cls_mean_trunk(model: nn.Module) -> nn.Module:
    """Virchow2's output: concat(class token, mean of the patch tokens), register tokens skipped."""
    import torch
    from torch import nn

    class ClsMean(nn.Module):
        def __init__(self, vit: nn.Module) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.vit.forward_features(x)  # (B, 1 + registers + patches, D), final norm applied
            patches = tokens[:, self.vit.num_prefix_tokens:]
            return torch.cat([tokens[:, 0], patches.mean(1)], dim=-1)

    return ClsMean(model)


def _how(repo: str, files: tuple[str, ...], gated: bool = True) -> str:
    access = ("request access on the model page (gated: log in, accept the terms), then " if gated else "")
    return (f"{access}download {files[0]} from https://huggingface.co/{repo} on a machine with internet, e.g.\n"
            f"  huggingface-cli download {repo} {files[0]}   (fills the Hugging Face cache {{hf_dir}})\n"
            f"then copy that cache here, or pass --weights /path/to/{files[0]}")


def _register(name: str, repo: str, dim: int, build, trunk, files: tuple[str, ...], architecture: str,
              output: str, licence: str, input_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              convert=None, gated: bool = True) -> None:
    register_encoder(EncoderSpec(
        name=name, dim=dim, build=build, trunk=trunk, required_prefixes=("",), hub_files=(),
        how_to_get=_how(repo, files, gated), mean=mean, std=std, default_input_size=input_size,
        input_mpp=0.5, architecture=architecture, output=output, hf_repo=repo, weight_files=files,
        strict=True, convert=convert, card_url=f"https://huggingface.co/{repo}", gated=gated, licence=licence))


# UNI (ViT-L/16): card `timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16,
# init_values=1e-5, num_classes=0, dynamic_img_size=True)`, weights `pytorch_model.bin`, ImageNet mean/std,
# 224 px crops of 20x (0.5 um/px) tiles; output = class token (1024).
_register("uni", "MahmoodLab/UNI", 1024,
          partial(_timm_vit, "vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5,
                  num_classes=0, dynamic_img_size=True),
          _cls_trunk, ("pytorch_model.bin",), "ViT-L/16 (timm vit_large_patch16_224, LayerScale 1e-5)",
          "class token", licence="CC-BY-NC-ND 4.0, gated (academic, non-commercial)")

# UNI2-h: card `timm.create_model("hf-hub:MahmoodLab/UNI2-h", pretrained=True, **timm_kwargs)` with
# img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
# mlp_ratio=2.66667*2, num_classes=0, no_embed_class=True, mlp_layer=SwiGLUPacked, act_layer=SiLU,
# reg_tokens=8, dynamic_img_size=True (architecture vit_giant_patch14_224); `pytorch_model.bin`; class token.
_register("uni2_h", "MahmoodLab/UNI2-h", 1536,
          partial(_timm_vit, "vit_giant_patch14_224", img_size=224, patch_size=14, depth=24, num_heads=24,
                  init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True,
                  mlp_layer="swiglu", reg_tokens=8, dynamic_img_size=True),
          _cls_trunk, ("pytorch_model.bin",),
          "ViT-H/14 1536-d, 24 blocks, 24 heads, SwiGLU, 8 register tokens (timm vit_giant_patch14_224)",
          "class token", licence="CC-BY-NC-ND 4.0, gated (academic, non-commercial)")

# Virchow2: card `timm.create_model("hf-hub:paige-ai/Virchow2", pretrained=True, mlp_layer=SwiGLUPacked,
# act_layer=torch.nn.SiLU)`; config.json: vit_huge_patch14_224, img_size=224, init_values=1e-5,
# num_classes=0, mlp_ratio=5.3375, reg_tokens=4, global_pool="", dynamic_img_size=True; ImageNet mean/std.
# Card: embedding = concat(class token, mean of patch tokens output[:, 5:]) -> 2560.
_register("virchow2", "paige-ai/Virchow2", 2560,
          partial(_timm_vit, "vit_huge_patch14_224", img_size=224, init_values=1e-5, num_classes=0,
                  mlp_ratio=5.3375, reg_tokens=4, global_pool="", dynamic_img_size=True, mlp_layer="swiglu"),
          _cls_mean_trunk, _ST_THEN_BIN,
          "ViT-H/14 1280-d, 32 blocks, SwiGLU, 4 register tokens (timm vit_huge_patch14_224)",
          "concat(class token, mean patch token)", licence="CC-BY-NC-ND 4.0, gated (non-commercial)")

# H-optimus-0 / H-optimus-1: card `timm.create_model("hf-hub:bioptimus/H-optimus-0", pretrained=True,
# init_values=1e-5, dynamic_img_size=False)`; config.json: vit_giant_patch14_reg4_dinov2, num_classes=0,
# img_size=224, global_pool="token"; mean (0.707223, 0.578729, 0.703617), std (0.211883, 0.230117,
# 0.177517); 224 px at 0.5 um/px; class token (1536). Repo files: pytorch_model.bin (+ safetensors variant).
_HOPTIMUS_LICENCE = {"hoptimus0": "Apache-2.0",
                     "hoptimus1": "gated; academic research use only (Bioptimus terms on the card)"}
for _name, _repo in (("hoptimus0", "bioptimus/H-optimus-0"), ("hoptimus1", "bioptimus/H-optimus-1")):
    _register(_name, _repo, 1536,
              partial(_timm_vit, "vit_giant_patch14_reg4_dinov2", img_size=224, num_classes=0, global_pool="token",
                      init_values=1e-5, dynamic_img_size=False),
              _cls_trunk, _ST_THEN_BIN,
              "ViT-g/14 1536-d, 40 blocks, 24 heads, SwiGLU, 4 register tokens (timm vit_giant_patch14_reg4_dinov2)",
              "class token", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, gated=_name == "hoptimus1", licence=_HOPTIMUS_LICENCE[_name])

# Prov-GigaPath tile encoder: card `timm.create_model("hf_hub:prov-gigapath/prov-gigapath", pretrained=True)`;
# config.json: vit_giant_patch14_dinov2 with img_size=224, in_chans=3, patch_size=16, embed_dim=1536,
# depth=40, num_heads=24, init_values=1e-05, mlp_ratio=5.33334, num_classes=0 (SwiGLU from the timm
# architecture); transform Resize(256) + CenterCrop(224), ImageNet mean/std; `pytorch_model.bin`; class token.
_register("gigapath", "prov-gigapath/prov-gigapath", 1536,
          partial(_timm_vit, "vit_giant_patch14_dinov2", img_size=224, in_chans=3, patch_size=16, embed_dim=1536,
                  depth=40, num_heads=24, init_values=1e-5, mlp_ratio=5.33334, num_classes=0),
          _cls_trunk, ("pytorch_model.bin",),
          "ViT-g/16 1536-d, 40 blocks, 24 heads, SwiGLU (timm vit_giant_patch14_dinov2, patch_size=16)",
          "class token", licence="Apache-2.0, gated (terms accepted on the card)")


# --------------------------------------------------------------------------- Phikon-v2 (HF DINOv2 keys)


def dinov2_hf_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face ``Dinov2Model`` state dict (Phikon-v2's ``model.safetensors``) onto timm ViT keys.

    ``attention.attention.{query,key,value}`` are stacked into timm's fused ``qkv``;
    ``layer_scale{1,2}.lambda1`` -> ``ls{1,2}.gamma``; ``embeddings.mask_token`` (used only in training)
    is dropped. A state dict already in timm naming is returned unchanged.
    """
    import torch

    if not any(k.startswith(("embeddings.", "dinov2.embeddings.")) for k in state):
        return state
    state = {k[len("dinov2."):] if k.startswith("dinov2.") else k: v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    }
    layer_parts = {
        "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
        "attention.output.dense": "attn.proj",
    }
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, val in state.items():
        if key in simple:
            out[simple[key]] = val
        elif key == "embeddings.mask_token":
            continue
        elif key.startswith("encoder.layer."):
            _, _, idx, rest = key.split(".", 3)
            blk = f"blocks.{idx}"
            part, _, leaf = rest.rpartition(".")
            if part.startswith("attention.attention."):
                qkv.setdefault((blk, leaf), {})[part.rsplit(".", 1)[1]] = val
            elif rest in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
                out[f"{blk}.ls{rest[11]}.gamma"] = val
            elif part in layer_parts:
                out[f"{blk}.{layer_parts[part]}.{leaf}"] = val
            else:
                out[key] = val  # left as is: the key check names it as unexpected
        else:
            out[key] = val
    for (blk, leaf), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"{blk}.attn.qkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        else:
            for name, val in parts.items():
                out[f"{blk}.attention.attention.{name}.{leaf}"] = val
    return out


# Phikon-v2: card `AutoModel.from_pretrained("owkin/phikon-v2")` (transformers Dinov2Model: ViT-L/16,
# hidden 1024, 24 layers, 16 heads, mlp_ratio 4, LayerScale 1e-5, LayerNorm eps 1e-6, image 224),
# features = last_hidden_state[:, 0] (class token, 1024); ImageNet mean/std; weights `model.safetensors`.
# Built as the identical timm ViT-L/16 (class position embedding included, as DINOv2 has it).
_register("phikon_v2", "owkin/phikon-v2", 1024,
          partial(_timm_vit, "vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5, num_classes=0),
          _cls_trunk, ("model.safetensors",),
          "ViT-L/16 DINOv2 (transformers Dinov2Model keys, mapped to timm vit_large_patch16_224)",
          "class token", convert=dinov2_hf_to_timm, gated=False, licence="Owkin non-commercial licence")


# --------------------------------------------------------------------------- CONCH v1.5


def _conch_v15_build() -> nn.Module:
    """CONCH v1.5 vision tower as TRIDENT's ``model_zoo/conchv1_5`` defines it: ``trunk`` = ViT-L/16
    (1024-d, 24 blocks, 16 heads, mlp 4, qkv bias, LayerScale init 1.0, 224-px position grid),
    ``attn_pool_contrast`` = attentional pooler (1 query, 768-d, 8 heads, context 1024),
    ``ln_contrast`` = LayerNorm(768). Weights: ``pytorch_model_vision.bin`` of MahmoodLab/conchv1_5."""
    import torch
    from torch import nn

    class AttentionalPooler(nn.Module):
        def __init__(self, d_model: int = 768, context_dim: int = 1024, n_head: int = 8, n_queries: int = 1):
            super().__init__()
            self.query = nn.Parameter(torch.randn(n_queries, d_model))
            self.heads, self.scale = n_head, (d_model // n_head) ** -0.5
            self.ln_k, self.ln_q = nn.LayerNorm(context_dim), nn.LayerNorm(d_model)
            self.to_q = nn.Linear(d_model, d_model, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
            self.to_out = nn.Linear(d_model, d_model, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, n_queries, d_model)
            b, h = x.shape[0], self.heads
            x = self.ln_k(x)
            q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
            k, v = self.to_kv(x).chunk(2, dim=-1)
            q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
            sim = (q * self.scale) @ k.transpose(-2, -1)
            attn = (sim - sim.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
            out = (attn @ v).transpose(1, 2).reshape(b, -1, h * v.shape[-1])
            return self.to_out(out)

    class ConchV15(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = _timm_vit("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1.0,
                                   num_classes=0)
            self.attn_pool_contrast = AttentionalPooler()
            self.ln_contrast = nn.LayerNorm(768)

        def _pos_embed(self, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
            """DINO/iBOT position-embedding interpolation (bicubic, scale (w/16 + 0.1) / 14), as CONCH v1.5."""
            pos = self.trunk.pos_embed
            n = pos.shape[1] - 1
            if x.shape[1] - 1 == n and w == h:
                return pos
            side = int(math.sqrt(n))
            w0, h0 = w // 16 + 0.1, h // 16 + 0.1
            grid = nn.functional.interpolate(
                pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2),
                scale_factor=(w0 / side, h0 / side), mode="bicubic")
            return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.trunk
            w, h = x.shape[-2], x.shape[-1]
            x = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
            x = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + self._pos_embed(x, w, h)
            x = t.norm(t.blocks(t.norm_pre(x)))
            return self.ln_contrast(self.attn_pool_contrast(x)[:, 0])

    return ConchV15()


def _conch_v15_convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resize a ``trunk.pos_embed`` saved for another grid to the 14 x 14 build grid (bilinear, as
    TRIDENT's loader does before ``load_state_dict``)."""
    pos = state.get("trunk.pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[1] != 197:
        from timm.layers import resample_abs_pos_embed

        state = dict(state)
        state["trunk.pos_embed"] = resample_abs_pos_embed(pos.float(), new_size=(14, 14), num_prefix_tokens=1,
                                                          interpolation="bilinear", antialias=False, verbose=False)
    return state


# CONCH v1.5 (TITAN's patch encoder): TRIDENT `create_model_from_pretrained(checkpoint, img_size=448)`:
# Resize(448) + CenterCrop(448), ImageNet mean/std (512-px 20x patches in TITAN); output 768-d.
_register("conch_v15", "MahmoodLab/conchv1_5", 768, _conch_v15_build, lambda m: m, ("pytorch_model_vision.bin",),
          "CONCH v1.5 vision tower: ViT-L/16 + attentional pooler (trunk.*, attn_pool_contrast.*, ln_contrast.*)",
          "attentional pool + LayerNorm", input_size=448, convert=_conch_v15_convert,
          licence="CC-BY-NC-ND 4.0, gated (academic, non-commercial)")
