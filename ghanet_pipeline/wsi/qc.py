"""What ``segment`` writes for people: the tissue outline as GeoJSON (level-0 coordinates, opens in QuPath)
and the QC image (thumbnail, tissue outline, patch grid)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.files import atomic_path
from .tiling import Grid
from .tissue import TissueMask


# -- GeoJSON and QC -------------------------------------------------------------------------------------
def tissue_geojson(tissue: TissueMask, thumb_ds: float, slide_id: str, level0_mpp: float) -> dict[str, Any]:
    """FeatureCollection of tissue Polygons (outer ring + holes) in level-0 px, as QuPath annotations."""
    features = []
    for i, poly in enumerate(tissue.polygons):
        p0 = poly.scaled(thumb_ds)
        rings = []
        for ring in [p0.outer, *p0.holes]:
            if len(ring) < 3:
                continue
            pts = np.round(ring, 1).tolist()
            rings.append(pts + [pts[0]])
        if not rings or len(poly.outer) < 3:
            continue
        features.append({
            "type": "Feature",
            # QuPath reads "id" as a UUID: a deterministic one per slide and piece
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"ghanet:{slide_id}:tissue:{i}")),
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {
                "objectType": "annotation",
                "name": f"tissue {i}",
                "classification": {"name": "Tissue", "color": [0, 160, 0]},
                "isLocked": False,
                "area_um2": round(poly.area_um2, 1),
                "holes": len(rings) - 1,
            },
        })
    return {"type": "FeatureCollection", "features": features,
            "ghanet": {"slide_id": slide_id, "units": "level-0 pixels", "level0_mpp": level0_mpp,
                       "ghanet_version": __version__}}


def qc_image(thumb: np.ndarray, qc_ds: float, tissue: TissueMask, thumb_ds: float, grid: Grid,
             title: str) -> np.ndarray:
    """RGB QC image: ``thumb`` (at ``qc_ds`` level-0 px per px) with kept patches tinted and outlined,
    tissue outlines green and holes blue, a title line on top."""
    import cv2

    img = thumb.astype(np.float32)
    h, w = img.shape[:2]
    step = grid.step_level0
    kept = np.zeros((max(grid.n_rows, 1), max(grid.n_cols, 1)), dtype=bool)
    if len(grid.coords):
        kept[grid.coords[:, 1] // step, grid.coords[:, 0] // step] = True
    cx = np.floor((np.arange(w) + 0.5) * qc_ds / step).astype(np.int64)
    cy = np.floor((np.arange(h) + 0.5) * qc_ds / step).astype(np.int64)
    inx, iny = cx < grid.n_cols, cy < grid.n_rows
    cell = kept[np.clip(cy, 0, kept.shape[0] - 1)[:, None], np.clip(cx, 0, kept.shape[1] - 1)[None, :]]
    cell &= iny[:, None] & inx[None, :]
    tint = np.array([40.0, 90.0, 230.0], dtype=np.float32)
    img[cell] = img[cell] * 0.75 + tint * 0.25
    if step / qc_ds >= 4:  # grid lines where a cell starts, on kept cells
        bx = np.r_[True, cx[1:] != cx[:-1]]
        by = np.r_[True, cy[1:] != cy[:-1]]
        lines = cell & (bx[None, :] | by[:, None])
        img[lines] = img[lines] * 0.4 + tint * 0.6
    out = np.clip(img, 0, 255).astype(np.uint8)
    scale = thumb_ds / qc_ds
    thick = max(1, int(round(max(h, w) / 700)))
    for poly in tissue.polygons:
        outer = np.round((poly.outer + 0.5) * scale - 0.5).astype(np.int32)
        cv2.polylines(out, [outer], True, (0, 170, 0), thick, lineType=cv2.LINE_AA)
        holes = [np.round((hh + 0.5) * scale - 0.5).astype(np.int32) for hh in poly.holes]
        if holes:
            cv2.polylines(out, holes, True, (0, 60, 220), thick, lineType=cv2.LINE_AA)
    # title lines (split at double spaces), each scaled to fit the width
    lines = [t for t in title.split("  ") if t]
    line_h = max(16, int(round(max(h, w) / 60)))
    bar = np.full((line_h * len(lines) + 4, w, 3), 255, dtype=np.uint8)
    for k, text in enumerate(lines):
        scale = line_h / 34
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        scale *= min(1.0, (w - 8) / max(tw, 1))
        cv2.putText(bar, text, (4, line_h * (k + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    max(1, line_h // 24), cv2.LINE_AA)
    return np.concatenate([bar, out], axis=0)


def write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError(f"could not encode the QC image {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
