"""Whether bags (and a model's training bags) come from the same encoder: the recorded encoder fields
(name, weights hash, input size, um/px, patch size) compared, with messages that name the difference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core.attrs import same_setting
from ..core.errors import MismatchError
from .bags import Bag

#: attrs that must agree between bags used together (plus the feature dimension)
COMPAT_KEYS = ("encoder", "weights_sha256", "input_size", "target_mpp", "patch_size")


def encoder_meta(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attrs that identify how features were made (what a checkpoint records as ``encoder``)."""
    return {k: attrs.get(k, "unknown") for k in COMPAT_KEYS}


def _describe(item: Any, i: int) -> tuple[str, dict[str, Any]]:
    if isinstance(item, Bag):
        attrs = {**item.attrs, "dim": item.dim}
        return str(item.path), attrs
    attrs = dict(item)
    return str(attrs.get("path") or attrs.get("slide_id") or f"bag #{i}"), attrs


def check_compatible(items: Sequence[Bag | Mapping[str, Any]], names: Sequence[str] | None = None) -> None:
    """Raise :class:`MismatchError` unless all bags were made the same way.

    ``items`` are :class:`Bag` objects or attr dicts (a ``dim`` key, when present, is compared too).
    Compared: encoder, weights_sha256, input_size, target_mpp, patch_size. The message names the
    first bag that differs from the first one and each differing value. Foreign bags without these
    attrs count as ``unknown`` and so cannot be mixed with ghanet bags.
    """
    if not items:
        return
    described = [_describe(it, i) for i, it in enumerate(items)]
    if names is not None:
        described = [(str(n), a) for n, (_, a) in zip(names, described, strict=False)]
    keys = COMPAT_KEYS + ("dim",)
    name0, ref = described[0]
    for name, attrs in described[1:]:
        diffs = []
        for k in keys:
            a, b = ref.get(k, "unknown"), attrs.get(k, "unknown")
            if k == "dim" and ("dim" not in ref or "dim" not in attrs):
                continue
            if not same_setting(a, b):
                diffs.append(f"{k}: {a!r} vs {b!r}")
        if diffs:
            raise MismatchError(
                f"bags {name0} and {name} were made differently ({'; '.join(diffs)}); features from different "
                f"encoders, weights or patch geometry cannot be used together. Re-extract them with the same "
                f"settings (ghanet extract-features) or point --features at one encoder folder")


def encoder_differences(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """Human-readable differences of the encoder settings (:data:`COMPAT_KEYS`) between what a model
    (checkpoint ``encoder``) expects and what bag attrs / the current encoder have; a missing key counts."""
    diffs = []
    for key in COMPAT_KEYS:
        a, b = expected.get(key), found.get(key)
        if b is None:
            diffs.append(f"{key}: model {a!r}, features have none")
        elif not same_setting(a, b):
            diffs.append(f"{key}: model {a!r}, features {b!r}")
    return diffs


def check_encoder(expected: Mapping[str, Any], found: Mapping[str, Any], what: str) -> None:
    """Raise :class:`MismatchError` when ``found`` (bag attrs / current encoder) differs from the model's
    ``expected`` encoder settings."""
    diffs = encoder_differences(expected, found)
    if diffs:
        raise MismatchError(
            f"{what} does not match the encoder the model was trained with ({'; '.join(diffs)}). Features from "
            f"another encoder, other weights, input size or resolution give confident nonsense. Use the "
            f"weights the model was trained with (--weights FILE whose sha256 is {expected.get('weights_sha256')}) "
            f"or re-extract the features")
