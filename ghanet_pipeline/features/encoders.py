"""Patch encoders: a registry (name -> architecture builder, normalisation, output dim) and weights loading.

Weights are never downloaded at run time. :func:`load_encoder` takes

- ``weights=PATH``: a state dict file (``.safetensors``, or ``.pth``/``.pt``/``.bin`` loaded with
  ``torch.load(weights_only=True)``); its keys and shapes are checked against the architecture;
- ``weights=None``: the encoder's file in the torch hub cache or the Hugging Face hub cache (see
  :mod:`.weights`); when none is there, :class:`ConfigError` explains where to get the file;
- ``weights="random[:seed]"``: seeded random initialisation (tests, demos), recorded as ``random:<seed>``.

The registry holds the truncated ResNet50 (below) and the pathology foundation models of
:mod:`.foundation` (UNI, UNI2-h, Virchow2, H-optimus-0/1, Prov-GigaPath, Phikon-v2, CONCH v1.5).
The model expects float NCHW input already normalised with the encoder's mean/std; use
:func:`preprocess` to turn a uint8 NHWC batch (what the patch reader yields) into that on the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import ConfigError
from . import foundation  # noqa: F401  (registers the foundation models)
from .registry import ENCODERS, EncoderSpec, get_encoder_spec, register_encoder
from .weights import check_keys, find_hub_weights, parse_random, read_state_dict, resolve_weights

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

log = logging.getLogger(__name__)

__all__ = ["ENCODERS", "EncoderSpec", "LoadedEncoder", "bag_folder_name", "encoder_input_size", "find_hub_weights",
           "get_encoder_spec", "load_encoder",
           "parse_random", "preprocess", "read_state_dict", "register_encoder", "resolve_weights"]

#: key prefix of the per-channel standardisation in a calibrated weights file (``features/calibrate.py``)
CALIBRATION_PREFIX = "ghanet_calibration."


# --------------------------------------------------------------------------- resnet50_trunc


def _resnet50_full() -> nn.Module:
    from .resnet import resnet50  # torchvision's ResNet50 without importing torchvision (start-up time)

    return resnet50()


def _resnet50_trunk(model: nn.Module) -> nn.Module:
    """conv1 .. layer3 of a torchvision ResNet50, then global average pooling -> (B, 1024)."""
    from torch import nn

    return nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2,
                         model.layer3, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


register_encoder(EncoderSpec(
    name="resnet50_trunc",
    dim=1024,
    input_mpp=0.5,
    output="layer3 feature map, global average pooled",
    architecture="ResNet50 conv1..layer3 + global average pool (as CLAM), torchvision's state-dict keys",
    licence="BSD-3-Clause (torchvision code); weights trained on ImageNet (its terms: non-commercial research)",
    build=_resnet50_full,
    trunk=_resnet50_trunk,
    required_prefixes=("conv1.", "bn1.", "layer1.", "layer2.", "layer3."),
    # V1 ImageNet weights first: what CLAM / MCAT / G-HANet used (19c8e357 and 0676ba61 hold the same
    # V1 weights; 11ad3fa6 is torchvision's later V2 recipe).
    hub_files=("resnet50-19c8e357.pth", "resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth", "resnet50-*.pth"),
    how_to_get=(
        "download torchvision's ImageNet ResNet50 weights on a machine with internet, e.g.\n"
        "  wget https://download.pytorch.org/models/resnet50-0676ba61.pth   (V1, what CLAM/G-HANet use)\n"
        "  (or python -c \"import torchvision; torchvision.models.resnet50(weights='IMAGENET1K_V1')\" which "
        "saves it under ~/.cache/torch/hub/checkpoints/)\n"
        "then copy it here and pass --weights /path/to/resnet50-0676ba61.pth, or put it in {hub_dir}/"),
))


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedEncoder:
    """An encoder ready to run: ``model`` in eval mode on CPU (move it with ``.to``).

    ``weights_id`` is the weight file's SHA-256 (hex) or ``random:<seed>``; it is written into every
    bag and checkpoint so that features from different weights are never mixed.
    """

    spec: EncoderSpec
    model: nn.Module
    weights_id: str
    weights_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    #: provenance (JSON) of a calibrated weights file (``ghanet calibrate-encoder``); "" otherwise
    calibration: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self.spec.dim


def encoder_input_size(name: str, patch_size: int, input_size: int | None = None) -> int:
    """Side in px fed to encoder ``name``: ``input_size`` (``--resize``) when given, else the encoder's own
    input size (224 for most foundation models), else the segment patch size."""
    return int(input_size or get_encoder_spec(name).default_input_size or patch_size)


def bag_folder_name(name: str, patch_size: int, input_size: int | None = None,
                    weights: str | None = None, precision: str | None = None) -> str:
    """The ``<out>/features/`` sub-folder ``extract-features`` writes for these options (no weights read).

    ``weights``: the ``--weights`` value (``random[:seed]`` names its own folder; a file or None shares
    the folder of real weights); ``precision``: the ``--precision`` value (``int8`` bags have their own
    folder). The one rule for the CLI, the workflow and the docs.
    """
    from .bags import encoder_tag

    seed = parse_random(weights)
    return encoder_tag(name, encoder_input_size(name, patch_size, input_size),
                       "weights" if seed is None else f"random:{seed}", int8=precision == "int8")


def load_encoder(name: str = "resnet50_trunc", weights: str | Path | None = None,
                 hub_dir: Path | None = None, hf_dir: Path | None = None) -> LoadedEncoder:
    """Build encoder ``name`` with its weights (see module doc), in eval mode, on CPU."""
    import torch

    from ..core.files import file_sha256

    spec = get_encoder_spec(name)
    source = resolve_weights(spec, weights, hub_dir, hf_dir)
    notes: list[str] = []
    calib: dict[str, torch.Tensor] = {}
    if isinstance(source, int):
        if spec.strict:  # foundation models: fast seeded fill instead of timm's slow init of ~1e9 values
            full = _random_strict(spec, source)
        else:
            with torch.random.fork_rng(devices=[]):  # seed the CPU generator only, restore it afterwards
                torch.manual_seed(source)
                full = spec.build()
        weights_id, path = f"random:{source}", None
        notes.append(f"encoder {name} uses RANDOM weights (seed {source}): features carry no learned "
                     f"meaning; use only for tests and demos")
        log.warning(notes[-1])
    else:
        path = source
        state = read_state_dict(path)
        calib = {k[len(CALIBRATION_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(CALIBRATION_PREFIX)}
        if spec.convert is not None:
            state = spec.convert(state)
        if spec.strict:
            full = _load_strict(spec, state, path, notes)
        else:
            full = spec.build()
            notes += check_keys(spec, full.state_dict(), state, path)
            full.load_state_dict({k: v for k, v in state.items() if k.startswith(spec.required_prefixes)},
                                 strict=False)
        del state
        weights_id = file_sha256(path)
        log.info("encoder %s: weights %s (sha256 %s)", name, path, weights_id[:12])
    model = spec.trunk(full).eval()
    calibration = ""
    if calib and path is not None:
        model, calibration = _calibrated(model, calib, path, spec.dim)
        notes.append(f"encoder {name}: calibrated weights {path.name} (features standardised per channel)")
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedEncoder(spec=spec, model=model, weights_id=weights_id, weights_path=path, notes=notes,
                         calibration=calibration)


def _calibrated(trunk: nn.Module, calib: dict[str, torch.Tensor], path: Path, dim: int) -> tuple[nn.Module, str]:
    """``trunk`` followed by ``(f - mean) / std`` per channel (a frozen BatchNorm1d) and the file's record."""
    import json

    from safetensors import safe_open
    from torch import nn

    mean, std = calib.get("mean"), calib.get("std")
    if mean is None or std is None or mean.shape != (dim,) or std.shape != (dim,) or not bool((std > 0).all()):
        raise ConfigError(f"weights file {path}: {CALIBRATION_PREFIX}mean/std must be two positive vectors of "
                          f"length {dim}; recreate it with 'ghanet calibrate-encoder --overwrite'")
    norm = nn.BatchNorm1d(dim, eps=0.0, affine=False)
    norm.running_mean.copy_(mean.float())
    norm.running_var.copy_(std.float() ** 2)
    try:
        with safe_open(str(path), framework="pt") as fh:
            record = (fh.metadata() or {}).get("ghanet_calibration", "")
    except Exception:  # noqa: BLE001 - a .pth holding the keys: no header record
        record = ""
    return nn.Sequential(trunk, norm).eval(), record or json.dumps({"file": path.name})


def _random_strict(spec: EncoderSpec, seed: int) -> nn.Module:
    """Full-size model with seeded random weights, built on ``meta`` and filled in one pass.

    Matrices, patch embedding, tokens and position grids ~ N(0, 0.02) (one seeded generator, in
    parameter order), biases 0, norm weights 1, LayerScale at its ``init_values``: the scale of the
    reference init (finite, input-dependent features) without its slow truncated-normal pass. A model
    with buffers (which ``to_empty`` would leave uninitialised) is built the normal way.
    """
    import torch

    with torch.device("meta"):
        full = spec.build()
    if any(True for _ in full.buffers()):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return spec.build()
    full.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in full.modules():
            is_norm = "Norm" in type(mod).__name__
            for pname, p in mod.named_parameters(recurse=False):
                if pname.endswith("bias"):
                    p.zero_()
                elif is_norm:
                    p.fill_(1.0)
                elif pname == "gamma" and hasattr(mod, "init_values"):
                    p.fill_(float(mod.init_values))
                else:
                    p.normal_(0.0, 0.02, generator=gen)
    return full


def _load_strict(spec: EncoderSpec, state: dict[str, torch.Tensor], path: Path, notes: list[str]) -> nn.Module:
    """Build on the ``meta`` device, check every key and shape, then adopt the file's tensors (float32)."""
    import torch

    with torch.device("meta"):
        full = spec.build()
    notes += check_keys(spec, full.state_dict(), state, path)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    full.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(full.named_parameters()) + list(full.named_buffers()) if t.is_meta]
    if left:  # a non-persistent buffer the file cannot hold: rebuild the normal way
        with torch.device("cpu"):
            full = spec.build()
        full.load_state_dict(state, strict=True)
    return full


# --------------------------------------------------------------------------- input transform


def preprocess(batch_u8: torch.Tensor, spec: EncoderSpec, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` RGB -> normalised float ``(B, 3, H, W)`` in channels_last memory format.

    Runs wherever ``batch_u8`` lives (normalise on the GPU: 4x fewer bytes cross the bus). The
    permute of an NHWC tensor already has channels_last strides, so no copy is made for the layout.
    """
    import torch

    dtype = dtype or torch.float32
    x = batch_u8.permute(0, 3, 1, 2).to(dtype=torch.float32)
    mean = torch.tensor(spec.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    # (x / 255 - mean) / std as one multiply-add
    x = x.mul(1.0 / (255.0 * std)).sub_(mean / std)
    return x.to(dtype=dtype).contiguous(memory_format=torch.channels_last)


def describe_encoders(hub_dir: Path | None = None, hf_dir: Path | None = None) -> list[dict[str, object]]:
    """One row per registered encoder: name, width, input size (px), um/px, output, architecture,
    weights file found in the hub caches (None when absent), where it was looked for, model card."""
    from ..env.hubs import hf_hub_cache_dir, torch_hub_dir
    from .weights import looked_in

    hub_dir = torch_hub_dir() if hub_dir is None else hub_dir
    hf_dir = hf_hub_cache_dir() if hf_dir is None else hf_dir
    rows: list[dict[str, object]] = []
    for name in ENCODERS:
        spec = ENCODERS[name]
        rows.append({"name": name, "dim": spec.dim, "input_size": spec.default_input_size,
                     "input_mpp": spec.input_mpp, "output": spec.output, "architecture": spec.architecture,
                     "weights": find_hub_weights(spec, hub_dir, hf_dir), "looked_in": looked_in(spec, hub_dir, hf_dir),
                     "card": spec.card_url, "gated": spec.gated, "weight_files": spec.weight_files or spec.hub_files})
    return rows


