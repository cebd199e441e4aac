"""The patch-encoder registry: what ghanet knows about each encoder (:class:`EncoderSpec`) by name.

Entries are added by the modules that define encoders (the truncated ResNet50 in :mod:`.encoders`, the
pathology foundation models in :mod:`.foundation`); import :mod:`.encoders` to have them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """What the registry knows about an encoder.

    ``build()`` returns the full reference architecture with random weights (state dict keys as in
    the weight files users have, after ``convert``); ``trunk(model)`` turns it into the feature
    extractor returning ``(B, dim)``. ``required_prefixes`` are the state-dict key prefixes the trunk
    uses (other keys of the reference architecture, e.g. ``layer4``/``fc``, are allowed in weight
    files and ignored; ``("",)`` = every key). ``hub_files`` are torch-hub checkpoint names in order of
    preference (``*`` globs allowed); ``hf_repo`` + ``weight_files`` name the file in the Hugging Face
    hub cache. ``strict`` encoders are built on the ``meta`` device and take the file's tensors as they
    are (no second copy of a 4 GB model). ``convert`` maps a file's keys to ``build()``'s keys.
    ``input_size`` (px) and ``input_mpp`` (um/px) are what the model card feeds the model; None = the
    segment patch (256 px at its target um/px).
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
    input_mpp: float | None = None
    architecture: str = "a torchvision ResNet50"
    output: str = ""
    hf_repo: str | None = None
    weight_files: tuple[str, ...] = ()
    strict: bool = False
    convert: Callable[[dict], dict] | None = None
    card_url: str = ""
    gated: bool = False
    #: the weights' licence as the model card states it (the card is the authority: terms change)
    licence: str = ""


#: the encoder of ``extract-features`` when none is named (the one of CLAM, MCAT and the G-HANet paper)
DEFAULT_ENCODER = "resnet50_trunc"

#: name -> spec; add encoders with :func:`register_encoder`
ENCODERS: Registry[EncoderSpec] = Registry("encoder")


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add ``spec`` to :data:`ENCODERS` under its name (a name can be registered once)."""
    return ENCODERS.register(spec.name, spec)


def get_encoder_spec(name: str) -> EncoderSpec:
    """The registered spec for ``name``; :class:`ConfigError` listing the known names otherwise."""
    return ENCODERS.lookup(name)


def _normalisation(spec: EncoderSpec) -> str:
    if (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD):
        return "ImageNet"
    return f"mean {spec.mean}, std {spec.std}"


def encoder_table_markdown() -> str:
    """The registry as the markdown table of docs/encoders.md (``ghanet encoders --markdown`` prints it)."""
    head = ("| `--encoder` | model card | architecture | input | output | width | normalisation | weights file "
            "| licence of the weights |\n|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for name in sorted(ENCODERS.names(), key=lambda n: (n != DEFAULT_ENCODER, n)):
        s = ENCODERS[name]
        card = (f"[{s.hf_repo}]({s.card_url})" if s.hf_repo else "torchvision ResNet50 (ImageNet V1)") + (
            " (gated)" if s.gated else "")
        size = f"{s.default_input_size} px" if s.default_input_size else "the segment patch (256 px)"
        files = " or ".join(f"`{f}`" for f in (s.weight_files or s.hub_files[:2]))
        rows.append(f"| `{name}` | {card} | {s.architecture} | {size}, {s.input_mpp:g} um/px | {s.output} | {s.dim} "
                    f"| {_normalisation(s)} | {files} | {s.licence} |")
    return "\n".join(rows) + "\n"
