"""Vectorised patch grid: exact tissue fractions, thresholds, geometry of kept patches."""

from __future__ import annotations

import numpy as np
import pytest

from ghanet_pipeline.wsi.tiling import cell_fractions, patch_grid


def brute_force_fractions(mask: np.ndarray, thumb_ds: int, step: int, n_cols: int, n_rows: int) -> np.ndarray:
    """Reference: expand the mask to level-0 px and average each cell (only for integer ds)."""
    full = np.kron(mask, np.ones((thumb_ds, thumb_ds), dtype=np.float64))
    canvas = np.zeros((n_rows * step + thumb_ds, n_cols * step + thumb_ds))
    h, w = min(full.shape[0], canvas.shape[0]), min(full.shape[1], canvas.shape[1])
    canvas[:h, :w] = full[:h, :w]
    out = np.zeros((n_rows, n_cols))
    for r in range(n_rows):
        for c in range(n_cols):
            out[r, c] = canvas[r * step:(r + 1) * step, c * step:(c + 1) * step].mean()
    return out


def test_hand_made_fractions():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:6, 2:6] = 1
    # cells of 1.5 thumbnail px: cell 1 spans [1.5, 3) and overlaps the mask on [2, 3) -> 2/3
    frac = cell_fractions(mask, thumb_ds=4.0, step_level0=6, n_cols=6, n_rows=6)
    assert frac[1, 1] == pytest.approx(4 / 9)
    assert frac[1, 2] == pytest.approx(2 / 3) and frac[2, 2] == pytest.approx(1.0)
    assert frac[0].max() == 0 and frac[:, 4:].max() == 0


@pytest.mark.parametrize("thumb_ds, step", [(4, 8), (4, 6), (8, 20), (16, 256)])
def test_fractions_match_brute_force(thumb_ds, step):
    rng = np.random.default_rng(0)
    mask = (rng.random((23, 31)) > 0.5).astype(np.uint8)
    n_cols, n_rows = (31 * thumb_ds) // step, (23 * thumb_ds) // step
    got = cell_fractions(mask, float(thumb_ds), step, n_cols, n_rows)
    want = brute_force_fractions(mask, thumb_ds, step, n_cols, n_rows)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_area_beyond_thumbnail_counts_as_no_tissue():
    mask = np.ones((4, 4), dtype=np.uint8)  # covers level-0 [0, 40) at ds 10
    frac = cell_fractions(mask, 10.0, 30, n_cols=2, n_rows=2)  # cell 1 spans [30, 60): 10/30 inside
    assert frac[0, 0] == pytest.approx(1.0) and frac[0, 1] == pytest.approx(1 / 3)
    assert frac[1, 1] == pytest.approx(1 / 9)


def test_patch_grid_threshold_and_geometry():
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[4:12, 8:20] = 1
    dims = (30 * 16 - 5, 20 * 16 - 5)  # level-0 size: the last partial cell is not used
    g = patch_grid(mask, 16.0, dims, step_level0=64, min_tissue=0.5)
    assert (g.n_cols, g.n_rows) == (dims[0] // 64, dims[1] // 64)
    assert g.coords.dtype == np.int64 and g.coords.shape[1] == 2
    assert np.all(g.coords % 64 == 0)
    assert np.all(g.coords[:, 0] + 64 <= dims[0]) and np.all(g.coords[:, 1] + 64 <= dims[1])
    assert np.all(g.tissue_fraction >= 0.5)
    # mask covers level-0 x in [128, 320), y in [64, 192): cells x 128..256, y 64..128 are full
    full = {(x, y) for x in (128, 192, 256) for y in (64, 128)}
    assert full <= set(map(tuple, g.coords.tolist()))
    # row-major order (y, then x)
    order = np.lexsort((g.coords[:, 0], g.coords[:, 1]))
    assert np.array_equal(order, np.arange(len(g.coords)))
    strict = patch_grid(mask, 16.0, dims, step_level0=64, min_tissue=1.0)
    loose = patch_grid(mask, 16.0, dims, step_level0=64, min_tissue=0.01)
    assert len(strict.coords) <= len(g.coords) <= len(loose.coords)
    assert set(map(tuple, strict.coords.tolist())) == full


def test_slide_smaller_than_one_patch():
    g = patch_grid(np.ones((5, 5), dtype=np.uint8), 16.0, (200, 300), step_level0=256)
    assert g.coords.shape == (0, 2) and g.n_cols == 0
