"""A slide's overlay layers for the viewer: patch scores on the patch grid, in level-0 pixels.

Scores come from the QuPath GeoJSON that ``predict --heatmaps`` writes (``inference/qupath.py``): one
square per patch (top-left ``(x, y)`` and side ``s`` in level-0 px) with the measurements
``attention`` (morphology attention ``w_mor``) and ``assoc_<family>`` (the family's top-k masked
association, 0 outside the top k). Without scores the patch grid comes from the coords file of
``segment`` and only the tissue layers are shown.

The viewer draws each layer as a raster with one cell per grid square: patch ``i`` sits in column
``(x_i - x0) / s`` and row ``(y_i - y0) / s`` of a grid whose origin ``(x0, y0)`` is the patch
position closest to (0, 0) modulo ``s``. ``segment`` lays its grid from level-0 (0, 0) with step
``s``, so every patch falls exactly on a cell; coordinates made elsewhere (CLAM) that do not are
placed in the cell holding their top-left corner and the page says so (``snapped``).

Values are shown like the PNG heatmaps: multiplied by N (the case's number of patches), so 1 means
"as much as under uniform attention"; the colour scale of a layer runs from 0 to its maximum over
the case's slides.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError

#: patches per layer shown in the gallery of top patches
N_TOP = 4


@dataclass
class Layer:
    """One score per patch. ``values`` (N,) as shown (x N); ``vmax`` top of the colour scale;
    ``masked``: 0 means "outside the top-k" (drawn in a flat colour) rather than a low score."""

    key: str
    name: str
    unit: str
    values: np.ndarray
    vmax: float
    masked: bool = False


@dataclass
class SlideScores:
    """What one slide's page draws: the patch grid (level-0 px) and its layers."""

    slide_id: str
    coords: np.ndarray  # (N, 2) int64 level-0 top-left
    size0: int  # patch side, level-0 px
    layers: list[Layer] = field(default_factory=list)
    tissue: list[list[list[int]]] = field(default_factory=list)  # rings of level-0 (x, y)
    notes: list[str] = field(default_factory=list)


@dataclass
class Grid:
    """``col``/``row`` (N,) of each patch in a ``cols`` x ``rows`` grid of side ``step`` from ``origin``."""

    origin: tuple[int, int]
    step: int
    cols: int
    rows: int
    col: np.ndarray
    row: np.ndarray
    snapped: bool


def patch_grid(coords: np.ndarray, step: int) -> Grid:
    """Place patches (level-0 top-left ``coords``) on a grid of side ``step`` (see module docstring)."""
    c = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if step < 1:
        raise InputError(f"patch side {step} px must be positive")
    if len(c) == 0:
        return Grid((0, 0), step, 0, 0, np.zeros(0, np.int64), np.zeros(0, np.int64), False)
    # origin: the grid phase shared by most patches, moved next to the smallest coordinate
    phase = [int(np.bincount(c[:, a] % step).argmax()) for a in (0, 1)]
    origin = tuple(int(c[:, a].min() - ((c[:, a].min() - phase[a]) % step)) for a in (0, 1))
    rel = c - np.asarray(origin, dtype=np.int64)
    col, row = rel[:, 0] // step, rel[:, 1] // step
    snapped = bool(((rel % step) != 0).any())
    return Grid(origin=(int(origin[0]), int(origin[1])), step=int(step), cols=int(col.max()) + 1,
                rows=int(row.max()) + 1, col=col, row=row, snapped=snapped)


def read_scores_geojson(path: Path) -> tuple[np.ndarray, int, dict[str, np.ndarray]]:
    """``(coords (N, 2), side, {measurement: (N,) values, NaN where missing})`` of a patch GeoJSON."""
    try:
        fc = json.loads(Path(path).read_text(encoding="utf-8"))
        feats = fc["features"]
        side = int(fc["properties"]["patch_size_level0"])
        coords = np.asarray([f["geometry"]["coordinates"][0][0] for f in feats], dtype=np.int64).reshape(-1, 2)
        names = list(dict.fromkeys(k for f in feats for k in f["properties"].get("measurements", {})))
        meas = {n: np.asarray([f["properties"].get("measurements", {}).get(n, np.nan) for f in feats], dtype=np.float64)
                for n in names}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise InputError(f"patch scores {path} cannot be read as predict's GeoJSON ({type(exc).__name__}: {exc}); "
                         f"rerun `ghanet predict --heatmaps --overwrite` for this case") from None
    return coords, side, meas


def read_tissue(path: Path | None) -> list[list[list[int]]]:
    """Rings (outer outlines and holes) of the tissue GeoJSON of ``segment`` in level-0 px; [] if absent."""
    if path is None:
        return []
    try:
        fc = json.loads(Path(path).read_text(encoding="utf-8"))
        rings = []
        for f in fc.get("features", []):
            geom = f.get("geometry") or {}
            polys = [geom["coordinates"]] if geom.get("type") == "Polygon" else geom.get("coordinates", [])
            for poly in polys:
                rings += [[[int(round(x)), int(round(y))] for x, y, *_ in ring] for ring in poly]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"tissue outline {path} cannot be read ({type(exc).__name__}: {exc}); rerun `ghanet "
                         f"segment --overwrite` for this slide") from None
    return rings


def family_names(measurements: Sequence[str], families: Sequence[str]) -> dict[str, str]:
    """``assoc_<sanitised family>`` measurement -> the family's own name (as the model lists it)."""
    from ..core.ids import sanitize_id

    names = {}
    for fam in families:
        try:
            names[f"assoc_{sanitize_id(fam, 'family').replace(' ', '_')}"] = fam
        except InputError:
            continue
    return {m: names.get(m, m[len("assoc_"):]) for m in measurements if m.startswith("assoc_")}


def slide_layers(slide_id: str, scores: Path | None, coords_h5: Path | None, tissue: Path | None,
                 n_case: int, families: Sequence[str]) -> SlideScores:
    """The layers of one slide (values x ``n_case``; colour scales set later by :func:`share_scales`)."""
    from ..wsi.segment import load_coords

    if scores is not None:
        coords, side, meas = read_scores_geojson(scores)
    elif coords_h5 is not None:
        coords, attrs = load_coords(coords_h5)
        side, meas = int(attrs["patch_size_level0"]), {}
    else:  # bags made elsewhere, no --heatmaps: the slide alone
        coords, side, meas = np.zeros((0, 2), dtype=np.int64), 1, {}
    out = SlideScores(slide_id=slide_id, coords=coords, size0=side, tissue=read_tissue(tissue))
    if "attention" in meas:
        out.layers.append(Layer("attention", "morphology attention", "attention x N (1 = uniform)",
                                meas["attention"] * n_case, 0.0))
    for m, fam in family_names(list(meas), families).items():
        out.layers.append(Layer(m, f"{fam} association", "masked association x N", meas[m] * n_case, 0.0,
                                masked=True))
    if scores is None:
        out.notes.append("no patch scores for this slide (predict ran without --heatmaps): only the tissue "
                         "outline and the patch grid are shown" if len(coords) else
                         "no patch scores and no patch grid for this slide (predict ran without --heatmaps on "
                         "bags made elsewhere): the slide alone is shown")
    return out


def share_scales(slides: Sequence[SlideScores]) -> None:
    """Give each layer the colour-scale top of its key over all ``slides`` of a case (1 when all zero)."""
    top: dict[str, float] = {}
    for s in slides:
        for lay in s.layers:
            finite = lay.values[np.isfinite(lay.values)]
            top[lay.key] = max(top.get(lay.key, 0.0), float(finite.max()) if finite.size else 0.0)
    for s in slides:
        for lay in s.layers:
            lay.vmax = top[lay.key] if top[lay.key] > 0 else 1.0


def top_patches(values: np.ndarray, k: int = N_TOP) -> list[int]:
    """Indices of the ``k`` highest finite values above 0 (descending, ties by patch order)."""
    v = np.where(np.isfinite(values), values, -np.inf)
    order = np.argsort(-v, kind="stable")
    return [int(i) for i in order[v[order] > 0][:k]]


def _round(values: np.ndarray, digits: int = 4) -> list[float | None]:
    """Values with ``digits`` significant digits for the page (None for NaN)."""
    out: list[float | None] = []
    for v in values.tolist():
        out.append(None if not np.isfinite(v) else float(f"{v:.{digits}g}"))
    return out


def page_data(s: SlideScores) -> dict[str, Any]:
    """The JSON-able part of a slide page's data: grid, patches, layers, tissue rings."""
    grid = patch_grid(s.coords, s.size0)
    return {
        "grid": {"x0": grid.origin[0], "y0": grid.origin[1], "step": grid.step, "cols": grid.cols, "rows": grid.rows,
                 "snapped": grid.snapped},
        "patches": {"col": grid.col.tolist(), "row": grid.row.tolist(), "x": s.coords[:, 0].tolist(),
                    "y": s.coords[:, 1].tolist()},
        "layers": [{"key": lay.key, "name": lay.name, "unit": lay.unit, "vmax": float(f"{lay.vmax:.4g}"),
                    "masked": lay.masked, "values": _round(lay.values), "top": top_patches(lay.values)}
                   for lay in s.layers],
        "tissue": s.tissue,
    }
