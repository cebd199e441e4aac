"""Per-patch scores as a QuPath-importable GeoJSON file (one detection per patch).

QuPath (0.4 or later) reads a GeoJSON ``FeatureCollection`` with *File > Import objects from file* (or
by dragging the file onto the open slide). Each patch becomes a detection whose square ROI is the
patch in level-0 pixels (origin at the top-left of the full-resolution image, as QuPath expects) and
whose measurement list holds the patch's scores; *Measure > Show measurement maps* then colours the
slide by any of them at full resolution.

Measurements per patch (plain values, not multiplied by N):

- ``attention``: the morphology attention ``w_mor`` (mean over the fold models; sums to 1 over the
  case's patches);
- ``assoc_<family>``: the family's top-k masked association (0 outside the top-k), the family name
  sanitised as in the PNG file names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import atomic_path


def patch_feature_collection(coords_level0: np.ndarray, size_level0: int,
                             measurements: Mapping[str, np.ndarray], slide_id: str = "") -> dict[str, Any]:
    """GeoJSON FeatureCollection: one square ``Polygon`` detection per patch.

    ``coords_level0`` (N, 2) top-left (x, y) in level-0 px; ``size_level0`` the patch side in level-0
    px; ``measurements`` name -> (N,) values (non-finite values are left out of that patch's list).
    """
    coords = np.asarray(coords_level0, dtype=np.int64).reshape(-1, 2)
    s = int(size_level0)
    cols = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in measurements.items()}
    for k, v in cols.items():
        if len(v) != len(coords):
            raise ValueError(f"measurement {k!r} has {len(v)} values for {len(coords)} patches")
    features = []
    for i, (x, y) in enumerate(coords.tolist()):
        ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
        meas = {k: float(v[i]) for k, v in cols.items() if np.isfinite(v[i])}
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "detection", "name": f"patch {i}", "measurements": meas}})
    return {"type": "FeatureCollection", "features": features,
            "properties": {"slide_id": slide_id, "units": "level-0 pixels", "patch_size_level0": s}}


def write_patch_geojson(path: Path | str, coords_level0: np.ndarray, size_level0: int,
                        measurements: Mapping[str, np.ndarray], slide_id: str = "") -> Path:
    """Write :func:`patch_feature_collection` as ``path`` (atomically, compact JSON)."""
    fc = patch_feature_collection(coords_level0, size_level0, measurements, slide_id)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(fc, separators=(",", ":"), allow_nan=False), encoding="utf-8")
    return Path(path)
