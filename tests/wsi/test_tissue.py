"""Tissue mask from thumbnails: saturation threshold, holes, minimum areas in um^2."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ghanet_pipeline.wsi.tissue import TissueParams, detect_tissue, saturation_mask

PINK = (230, 150, 190)
GLASS = (243, 242, 245)


def canvas(h: int, w: int) -> np.ndarray:
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = GLASS
    return img


def test_blank_glass_has_no_tissue():
    res = detect_tissue(canvas(100, 120), thumb_mpp=16.0)
    assert res.polygons == [] and res.mask.sum() == 0 and res.area_um2 == 0


def test_disk_with_hole_area_and_polygon():
    img = canvas(200, 200)
    cv2.circle(img, (100, 100), 60, PINK, thickness=-1)
    cv2.circle(img, (100, 100), 20, GLASS, thickness=-1)  # lumen: 1257 px = 0.32 mm^2 at 16 um/px
    res = detect_tissue(img, thumb_mpp=16.0)
    assert len(res.polygons) == 1
    poly = res.polygons[0]
    assert len(poly.holes) == 1
    expected_px = np.pi * (60 ** 2 - 20 ** 2)
    assert res.area_um2 == pytest.approx(expected_px * 16.0 ** 2, rel=0.08)
    assert res.mask[100, 100] == 0 and res.mask[100, 100 + 40] == 1 and res.mask[5, 5] == 0
    # polygon vertices lie on the disk's rim, the hole's on the lumen's rim
    r_out = np.hypot(*(poly.outer - 100).T)
    r_in = np.hypot(*(poly.holes[0] - 100).T)
    assert np.all(np.abs(r_out - 60) < 2.5) and np.all(np.abs(r_in - 20) < 3.5)


def test_small_pieces_dropped_and_small_holes_filled_by_physical_area():
    img = canvas(200, 200)
    cv2.circle(img, (70, 100), 50, PINK, thickness=-1)
    cv2.circle(img, (70, 100), 4, GLASS, thickness=-1)   # ~50 px = 12,800 um^2 < 16,384: filled
    cv2.circle(img, (170, 30), 5, PINK, thickness=-1)    # ~80 px = 20,000 um^2 < 50,000: dropped
    res = detect_tissue(img, thumb_mpp=16.0, params=TissueParams(median_um=16, close_um=16))
    assert len(res.polygons) == 1 and res.polygons[0].holes == []
    assert res.mask[100, 70] == 1 and res.mask[30, 170] == 0
    # with smaller minimum areas both are kept
    res2 = detect_tissue(img, thumb_mpp=16.0, params=TissueParams(median_um=16, close_um=16,
                                                                  min_tissue_area_um2=5_000,
                                                                  min_hole_area_um2=2_000))
    assert len(res2.polygons) == 2 and sum(len(p.holes) for p in res2.polygons) == 1


def test_island_inside_hole_survives():
    img = canvas(240, 240)
    cv2.circle(img, (120, 120), 100, PINK, thickness=-1)
    cv2.circle(img, (120, 120), 50, GLASS, thickness=-1)
    cv2.circle(img, (120, 120), 20, PINK, thickness=-1)
    res = detect_tissue(img, thumb_mpp=16.0)
    assert len(res.polygons) == 2
    assert res.mask[120, 120] == 1 and res.mask[120, 120 + 35] == 0 and res.mask[120, 120 + 75] == 1


def test_same_physical_tissue_at_two_resolutions():
    """Sizes in um make the result independent of the thumbnail resolution."""
    areas = []
    for mpp, scale in [(16.0, 1), (8.0, 2)]:
        img = canvas(150 * scale, 150 * scale)
        cv2.circle(img, (75 * scale, 75 * scale), 40 * scale, PINK, thickness=-1)
        cv2.circle(img, (20 * scale, 20 * scale), 7 * scale, PINK, thickness=-1)  # ~39,000 um^2: dropped
        res = detect_tissue(img, thumb_mpp=mpp)
        assert len(res.polygons) == 1
        areas.append(res.area_um2)
    assert areas[0] == pytest.approx(areas[1], rel=0.05)
    assert areas[0] == pytest.approx(np.pi * (40 * 16) ** 2, rel=0.06)


def test_saturation_threshold():
    img = canvas(100, 100)
    cv2.rectangle(img, (10, 10), (60, 60), (170, 160, 165), thickness=-1)  # grey smudge: S ~ 15
    cv2.rectangle(img, (65, 10), (95, 90), PINK, thickness=-1)
    m15 = saturation_mask(img, 16.0, TissueParams(sat_threshold=15))
    m5 = saturation_mask(img, 16.0, TissueParams(sat_threshold=5))
    assert m15[35, 35] == 0 and m15[50, 80] == 1
    assert m5[35, 35] == 1


def test_polygon_scaling_to_level0():
    img = canvas(100, 100)
    cv2.rectangle(img, (20, 30), (79, 69), PINK, thickness=-1)
    res = detect_tissue(img, thumb_mpp=16.0, params=TissueParams(median_um=16, close_um=16))
    p0 = res.polygons[0].scaled(32.0)
    # thumbnail pixel i covers level-0 [32 i, 32 (i+1)); its centre is 32 (i + 0.5)
    assert p0.outer[:, 0].min() == pytest.approx(32 * 20.5) and p0.outer[:, 0].max() == pytest.approx(32 * 79.5)
    assert p0.outer[:, 1].min() == pytest.approx(32 * 30.5) and p0.outer[:, 1].max() == pytest.approx(32 * 69.5)
