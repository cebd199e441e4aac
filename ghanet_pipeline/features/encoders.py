"""Patch encoders: a registry (name -> architecture builder, normalisation, output dim) and weights resolution.

Weights are never downloaded at run time. :func:`load_encoder` takes

- ``weights=PATH``: a state dict file (``.pth``/``.pt`` loaded with ``torch.load(weights_only=True)``,
  or ``.safetensors``); its keys are checked against the architecture;
- ``weights=None``: the encoder's file in the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
  when none is there, :class:`ConfigError` explains how to obtain the file;
- ``weights="random"``: seeded random initialisation (tests, demos), recorded as ``random:<seed>``.

The model expects float NCHW input already normalised with the encoder's mean/std; use
:func:`preprocess` to turn a uint8 NHWC batch (what the patch reader yields) into that on the device.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..safeload import load_safetensors, torch_load_tensors

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: key prefix of the per-channel standardisation in a calibrated weights file (``features/calibrate.py``)
CALIBRATION_PREFIX = "ghanet_calibration."


@dataclass(frozen=True)
class EncoderSpec:
    """What the registry knows about an encoder.

    ``build()`` returns the full reference architecture with random weights (state dict keys as in
    the weight files users have); ``trunk(model)`` turns it into the feature extractor returning
    ``(B, dim)``. ``required_prefixes`` are the state-dict key prefixes the trunk uses (other keys of
    the reference architecture, e.g. ``layer4``/``fc``, are allowed in weight files and ignored).
    ``hub_files`` are torch-hub checkpoint names in order of preference (``*`` globs allowed).
    """

    name: str
    dim: int
    build: Callable[[], nn.Module]
    trunk: Callable[[nn.Module], nn.Module]
    required_prefixes: tuple[str, ...]
    hub_files: tuple[str, ...]
    how_to_get: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default_input_size: int | None = None  # None = the patch size from segment (256)


#: name -> spec; add encoders with :func:`register_encoder`
ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add ``spec`` to :data:`ENCODERS` (a name can be registered once)."""
    if spec.name in ENCODERS:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    ENCODERS[spec.name] = spec
    return spec


def get_encoder_spec(name: str) -> EncoderSpec:
    """The registered spec for ``name``; :class:`ConfigError` listing the known names otherwise."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise ConfigError(f"unknown encoder {name!r}; known encoders: {', '.join(sorted(ENCODERS))}") from None


# --------------------------------------------------------------------------- resnet50_trunc


def _resnet50_full() -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None)


def _resnet50_trunk(model: nn.Module) -> nn.Module:
    """conv1 .. layer3 of a torchvision ResNet50, then global average pooling -> (B, 1024)."""
    from torch import nn

    return nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2,
                         model.layer3, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


register_encoder(EncoderSpec(
    name="resnet50_trunc",
    dim=1024,
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


# --------------------------------------------------------------------------- weights


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


def parse_random(weights: str | None) -> int | None:
    """Seed of ``random`` / ``random:<seed>`` (``random`` = seed 0); None for anything else."""
    if weights is None:
        return None
    m = re.fullmatch(r"random(?::(\d+))?", str(weights).strip())
    if not m:
        return None
    return int(m.group(1) or 0)


def find_hub_weights(spec: EncoderSpec, hub_dir: Path | None = None) -> Path | None:
    """First of ``spec.hub_files`` present in the torch hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    if hub_dir is None:
        from ..doctor import torch_hub_checkpoint_dir

        hub_dir = torch_hub_checkpoint_dir()
    if not hub_dir.is_dir():
        return None
    for pattern in spec.hub_files:
        hits = sorted(p for p in hub_dir.glob(pattern) if p.is_file())
        if hits:
            return hits[0]
    return None


def resolve_weights(spec: EncoderSpec, weights: str | Path | None, hub_dir: Path | None = None) -> Path | int:
    """Where the weights come from: a file path, or an int seed for random initialisation.

    Raises :class:`ConfigError` when a given path does not exist or when nothing is found in the hub
    cache (the message says how to obtain the file).
    """
    seed = parse_random(None if weights is None else str(weights))
    if seed is not None:
        return seed
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "no such file"
            raise ConfigError(f"--weights {weights}: {what}. Pass a torchvision {spec.name} state dict "
                              f"(.pth or .safetensors) or 'random' for untrained weights (tests only)")
        return path
    if hub_dir is None:
        from ..doctor import torch_hub_checkpoint_dir

        hub_dir = torch_hub_checkpoint_dir()
    found = find_hub_weights(spec, hub_dir)
    if found is None:
        raise ConfigError(
            f"no weights for encoder {spec.name!r}: nothing matching {', '.join(spec.hub_files)} in "
            f"{hub_dir} (the torch hub cache; set TORCH_HOME to use another) and no --weights given. "
            f"ghanet never downloads weights at run time. To fix it, "
            + spec.how_to_get.format(hub_dir=hub_dir)
            + "\n(--weights random gives untrained features: only for tests and demos.)")
    return found


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file without unpickling code (safetensors or ``weights_only=True``).

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers and a ``module.`` prefix
    (DataParallel). Raises :class:`ConfigError` naming the file when it holds no tensors.
    """
    import torch

    path = Path(path)
    fix = ("Expected a state dict saved with torch.save(model.state_dict()) (.pth/.pt) or a .safetensors file; "
           "convert it in a trusted environment")
    if path.suffix.lower() == ".safetensors":
        obj: object = load_safetensors(path, "weights file", fix, ConfigError)
    else:
        obj = torch_load_tensors(path, "weights file", fix, ConfigError)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {path} does not hold a state dict (name -> tensor)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj  # type: ignore[return-value]


def _check_keys(spec: EncoderSpec, reference: dict[str, torch.Tensor], given: dict[str, torch.Tensor],
                path: Path) -> list[str]:
    """Raise :class:`ConfigError` for missing trunk keys, unknown keys or shape mismatches."""

    def used(k: str) -> bool:
        return k.startswith(spec.required_prefixes)

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")

    missing = sorted(k for k in reference if used(k) and k not in given)
    unexpected = sorted(k for k in given if k not in reference)
    bad_shape = sorted(k for k in given if k in reference and used(k) and tuple(given[k].shape) != tuple(reference[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {few(unexpected)}")
    if bad_shape:
        problems.append("wrong shapes: " + few([f"{k} {tuple(given[k].shape)} != {tuple(reference[k].shape)}"
                                                for k in bad_shape]))
    if problems:
        raise ConfigError(f"weights file {path} does not fit encoder {spec.name!r} (a torchvision ResNet50 "
                          f"state dict is expected): " + "; ".join(problems))
    ignored = sorted({k.split(".")[0] for k in given if not used(k)})
    return [f"ignored parts of the weights not used by {spec.name}: {', '.join(ignored)}"] if ignored else []


def load_encoder(name: str = "resnet50_trunc", weights: str | Path | None = None,
                 hub_dir: Path | None = None) -> LoadedEncoder:
    """Build encoder ``name`` with its weights (see module doc), in eval mode, on CPU."""
    import torch

    from ..ioutils import file_sha256

    spec = get_encoder_spec(name)
    source = resolve_weights(spec, weights, hub_dir)
    notes: list[str] = []
    calib: dict[str, torch.Tensor] = {}
    if isinstance(source, int):
        devices = []  # seed the CPU generator only, restore it afterwards
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(source)
            full = spec.build()
        weights_id, path = f"random:{source}", None
        notes.append(f"encoder {name} uses RANDOM weights (seed {source}): features carry no learned "
                     f"meaning; use only for tests and demos")
        log.warning(notes[-1])
    else:
        path = source
        full = spec.build()
        state = read_state_dict(path)
        calib = {k[len(CALIBRATION_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(CALIBRATION_PREFIX)}
        notes += _check_keys(spec, full.state_dict(), state, path)
        full.load_state_dict({k: v for k, v in state.items() if k.startswith(spec.required_prefixes)}, strict=False)
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
