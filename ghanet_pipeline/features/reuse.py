"""Whether an existing bag can be reused for an extraction asked for now: complete, made with the same
settings from the same patch grid (a bag made differently is refused, never replaced silently)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.attrs import same_setting
from ..core.errors import MismatchError
from .bags import read_bag_attrs, validate_bag


def reuse_problem(bag_path: Path, attrs: dict[str, Any], coords: np.ndarray, check_precision: bool = False
              ) -> str | None:
    """None when the existing bag is complete and made with these settings from these coords.

    An incomplete/damaged bag returns a reason (it is redone). A complete bag made with other settings
    or other coords raises :class:`MismatchError` (never silently replaced or reused). The precision
    is compared only when it was asked for explicitly (``check_precision``): under ``auto`` a bag made
    in another precision (e.g. bf16 on a GPU, fp32 on a CPU without AMX) is reused, as its features
    agree to per-patch cosine >= 0.9999.
    """
    problems = validate_bag(bag_path)
    if problems:
        return "; ".join(problems)
    old = read_bag_attrs(bag_path)
    keys = ("encoder", "weights_sha256", "input_size", "target_mpp", "patch_size", "patch_size_level0",
            "dtype", "slide_id")
    diffs = [f"{k}={old.get(k)!r} (now {attrs[k]!r})" for k in keys if not same_setting(old.get(k), attrs[k])]
    if "int8" in (old.get("precision"), attrs["precision"]) and (
            (old.get("precision"), old.get("engine_model")) != (attrs["precision"], attrs.get("engine_model"))):
        diffs.append(f"precision={old.get('precision')!r} model {old.get('engine_model')!r} (now {attrs['precision']!r} "
                     f"model {attrs.get('engine_model')!r}; int8 bags are never mixed with others)")
    elif check_precision and old.get("precision") != attrs["precision"]:
        diffs.append(f"precision={old.get('precision')!r} (now {attrs['precision']!r}, asked for with --precision)")
    if not diffs:
        import h5py

        with h5py.File(bag_path, "r") as h5:
            old_coords = h5["coords"][()]
        if old_coords.shape != coords.shape or not np.array_equal(old_coords, coords):
            diffs.append(f"coords ({len(old_coords)} patches, now {len(coords)} from segment)")
    if diffs:
        raise MismatchError(f"bag {bag_path} already exists but was made differently: {', '.join(diffs)}. "
                            f"Pass --overwrite to replace it, or use another --out")
    return None
