"""Recorded settings: HDF5 attrs <-> plain Python values, and the one rule that says whether a setting
recorded with an output (bag, coords file, checkpoint) is the same as the one asked for now."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

#: relative tolerance for numeric settings (um/px, thresholds): values written and read back through
#: JSON/HDF5 agree far closer than this; anything further apart is a different setting
SETTING_REL_TOL = 1e-6


def plain(value: Any) -> Any:
    """An h5py/numpy attr value as plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def h5_value(value: Any) -> Any:
    """A Python value as something h5py stores as a scalar attr (None becomes "", paths strings)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, Path):
        return str(value)
    return value


def same_setting(recorded: Any, current: Any) -> bool:
    """Whether a recorded setting equals the current one: numbers within :data:`SETTING_REL_TOL`
    (``1`` and ``1.0`` are the same), everything else by equality (``None`` only equals ``None``)."""
    recorded, current = plain(recorded), plain(current)
    numeric = (int, float)
    if isinstance(recorded, numeric) and isinstance(current, numeric) \
            and not isinstance(recorded, bool) and not isinstance(current, bool):
        return math.isclose(float(recorded), float(current), rel_tol=SETTING_REL_TOL, abs_tol=1e-12)
    return recorded == current
