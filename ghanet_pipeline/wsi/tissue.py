"""Tissue detection on a slide thumbnail (numpy/OpenCV only, no file I/O).

Recipe (as in CLAM, with sizes given physically so a setting means the same at 20x and 40x):
RGB -> HSV, median blur of the saturation channel, ``saturation > sat_threshold`` (0-255 scale;
glass and white background are unsaturated, H&E stain is not), morphological closing, contours with
holes (``cv2.RETR_CCOMP``), then tissue pieces smaller than ``min_tissue_area_um2`` and holes smaller
than ``min_hole_area_um2`` are dropped (a dropped hole is filled with tissue).

Defaults and why:

* thumbnail: 16 um/px (the segment stage reads it at 32x the 0.5 um/px target: a 32x downsample of a
  20x slide, 64x of a 40x slide). One 128 um patch is then 8x8 thumbnail px - fine enough for
  tissue fractions, small enough that a 40k x 40k slide's thumbnail is ~1250 px.
* median blur 112 um (7 px at 16 um/px) and closing 64 um (4 px) - CLAM's ``mthresh=7`` and
  ``close=4`` at its 64x segmentation level of a 40x slide, expressed in um.
* ``min_tissue_area_um2 = 50_000`` (0.05 mm^2, about 3 patches of 128 um): drops dust and debris.
  CLAM's ``a_t=100`` reference patches (about 1.6 mm^2 at 40x) would drop whole needle-biopsy
  fragments, so we are deliberately smaller.
* ``min_hole_area_um2 = 16_384`` (one 128 x 128 um patch, CLAM's ``a_h`` in spirit): smaller holes
  cannot change which patches are kept much and are filled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TissueParams:
    """Tissue-mask settings (saturation on the 0-255 HSV scale, sizes in um / um^2)."""

    sat_threshold: int = 15
    median_um: float = 112.0
    close_um: float = 64.0
    min_tissue_area_um2: float = 50_000.0
    min_hole_area_um2: float = 16_384.0


@dataclass
class TissuePolygon:
    """One tissue piece: outer ring and hole rings as (k, 2) float arrays of (x, y) in thumbnail px."""

    outer: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    area_um2: float = 0.0  # outer area minus hole areas

    def scaled(self, factor: float, offset: float = 0.5) -> TissuePolygon:
        """Same polygon in another pixel frame: ``(p + offset) * factor`` (thumbnail px -> level-0 px
        with ``factor`` = level-0 px per thumbnail px; ``offset`` 0.5 maps pixel centres)."""
        return TissuePolygon(outer=(self.outer + offset) * factor,
                             holes=[(h + offset) * factor for h in self.holes], area_um2=self.area_um2)


@dataclass
class TissueMask:
    """Result of :func:`detect_tissue`: the filtered binary mask (thumbnail px, uint8 0/1) and polygons."""

    mask: np.ndarray
    polygons: list[TissuePolygon]
    thumb_mpp: float

    @property
    def area_um2(self) -> float:
        return float(sum(p.area_um2 for p in self.polygons))


def _odd(n: float) -> int:
    k = max(1, int(round(n)))
    return k if k % 2 == 1 else k + 1


def saturation_mask(rgb: np.ndarray, thumb_mpp: float, params: TissueParams = TissueParams()) -> np.ndarray:
    """Raw tissue mask (uint8 0/1): median-blurred HSV saturation above the threshold, closed."""
    import cv2

    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    sat = hsv[..., 1]
    k = _odd(params.median_um / thumb_mpp)
    if k > 1 and min(sat.shape) > k:
        sat = cv2.medianBlur(sat, k)
    mask = (sat > params.sat_threshold).astype(np.uint8)
    c = max(1, int(round(params.close_um / thumb_mpp)))
    if c > 1:
        kernel = np.ones((c, c), dtype=np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return mask


def detect_tissue(rgb: np.ndarray, thumb_mpp: float, params: TissueParams = TissueParams()) -> TissueMask:
    """Tissue polygons (with holes) and the filtered mask from an RGB uint8 thumbnail at ``thumb_mpp`` um/px."""
    import cv2

    raw = saturation_mask(rgb, thumb_mpp, params)
    px_um2 = thumb_mpp * thumb_mpp
    contours, hierarchy = cv2.findContours(raw, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    polygons: list[TissuePolygon] = []
    mask = np.zeros(raw.shape, dtype=np.uint8)
    if hierarchy is None:
        return TissueMask(mask=mask, polygons=polygons, thumb_mpp=thumb_mpp)
    kept: list[tuple[float, np.ndarray, list[np.ndarray], float]] = []
    hier = hierarchy[0]  # rows: next, previous, first child, parent
    for i, cnt in enumerate(contours):
        if hier[i][3] != -1:
            continue  # a hole; handled with its parent
        holes = []
        child = hier[i][2]
        while child != -1:
            hc = contours[child]
            # cv2 areas run through pixel centres; add half the perimeter for the pixel-covered area
            if _covered_area(hc, hole=True) * px_um2 >= params.min_hole_area_um2:
                holes.append(hc)
            child = hier[child][0]
        area_um2 = (_covered_area(cnt) - sum(_covered_area(h, hole=True) for h in holes)) * px_um2
        if area_um2 < params.min_tissue_area_um2:
            continue
        kept.append((abs(float(cv2.contourArea(cnt))), cnt, holes, float(area_um2)))
    # draw the largest first so that tissue islands lying inside another piece's hole survive
    kept.sort(key=lambda k: -k[0])
    for _, cnt, holes, area_um2 in kept:
        cv2.drawContours(mask, [cnt], -1, 1, thickness=cv2.FILLED)
        if holes:
            cv2.drawContours(mask, holes, -1, 0, thickness=cv2.FILLED)
            cv2.drawContours(mask, holes, -1, 1, thickness=1)  # the hole's border pixels are tissue
        polygons.append(TissuePolygon(outer=cnt[:, 0, :].astype(np.float64),
                                      holes=[h[:, 0, :].astype(np.float64) for h in holes], area_um2=area_um2))
    return TissueMask(mask=mask, polygons=polygons, thumb_mpp=thumb_mpp)


def _covered_area(cnt: np.ndarray, hole: bool = False) -> float:
    """Area (thumbnail px^2) of the pixels a contour encloses: polygon area through pixel centres plus
    half the perimeter (+1) for an outer contour; a hole's contour runs on the tissue pixels around it,
    so its enclosed background is the polygon area minus half the perimeter (+1)."""
    import cv2

    a = abs(float(cv2.contourArea(cnt)))
    p = float(cv2.arcLength(cnt, True))
    return max(0.0, a - p / 2 + 1) if hole else a + p / 2 + 1
