"""Heatmap primitives (masking, painting, top patches) and the PNG writers."""

from __future__ import annotations

import numpy as np

from ghanet_pipeline.inference import heatmaps as hm


def masked(assoc: np.ndarray, topk: float) -> np.ndarray:
    """The model's own top-k masked softmax (what prediction passes to the heatmaps)."""
    import torch

    from ghanet_pipeline.models import genomic_weights

    return genomic_weights(torch.as_tensor(assoc, dtype=torch.float32), topk).numpy().astype(np.float64)


def test_top_indices_descending_and_positive_only():
    v = np.array([0.0, 0.3, 0.1, 0.0, 0.6])
    assert list(hm.top_indices(v, 4)) == [4, 1, 2]


def test_paint_places_patches_at_thumbnail_scale():
    coords = np.array([[0, 0], [64, 32], [128, 96]])  # level-0 px
    grid = hm.paint((8, 10), coords, 32, np.array([1.0, 2.0, 3.0]), downsample=16)  # patch = 2x2 thumb px
    assert grid[0:2, 0:2].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert grid[2:4, 4:6].tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert grid[6:8, 8:10].tolist() == [[3.0, 3.0], [3.0, 3.0]]
    assert np.isfinite(grid).sum() == 12  # three patches of 2x2 thumbnail px, nothing else
    # a patch running over the edge is clipped
    g1 = hm.paint((3, 3), np.array([[32, 32]]), 32, np.array([1.0]), downsample=16)
    assert np.isfinite(g1).sum() == 1 and g1[2, 2] == 1.0
    # overlapping patches: the larger value wins
    g2 = hm.paint((4, 4), np.array([[0, 0], [16, 16]]), 48, np.array([5.0, 1.0]), downsample=16)
    assert g2[1, 1] == 5.0 and g2[3, 3] == 1.0


def test_render_png_writes_image_with_colorbar(tmp_path):
    thumb = np.full((60, 80, 3), 230, np.uint8)
    grid = np.full((60, 80), np.nan, np.float32)
    grid[10:30, 10:40] = np.linspace(0, 1, 30)[None, :]
    tissue = np.full_like(grid, np.nan)
    tissue[10:50, 10:70] = 0
    out = hm.render_png(tmp_path / "a.png", thumb, grid, "title", "score", masked_grid=tissue, masked_label="outside")
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[1] > 300
    # flat thumbnail + gradient overlay + colour bar: many distinct colours
    assert len(np.unique(img[..., :3].reshape(-1, 3).round(3), axis=0)) > 50
    assert not list(tmp_path.glob(".*.tmp"))


def test_case_heatmaps_on_real_slide(tmp_path, real_slide):
    from ghanet_pipeline.wsi.slide import Slide

    with Slide(real_slide) as s:
        plan = s.plan(0.5, 256)
        w, h = s.dimensions
    xs = np.arange(0, w - plan.patch_size_level0, plan.patch_size_level0)
    ys = np.arange(0, h - plan.patch_size_level0, plan.patch_size_level0)
    coords = np.array([(x, y) for y in ys for x in xs], dtype=np.int64)
    n = len(coords)
    rng = np.random.default_rng(0)
    w_mor = rng.dirichlet(np.ones(n))
    assoc = masked(rng.normal(size=(2, n)), 0.25)
    scores = [hm.SlideScores("cmu", real_slide, coords, w_mor, assoc, n_case=n,
                             patch_size_level0=plan.patch_size_level0)]
    res = hm.write_case_heatmaps(tmp_path, "case1", scores, ["Onco", "Tumor Supp"], 0.5, 256, 0.25, n_top=4)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in res.files)
    assert "cmu_morphology.png" in names and "cmu_assoc_Onco.png" in names and "cmu_assoc_Tumor_Supp.png" in names
    tiles = sorted(tmp_path.glob("top/*.png"))
    from ghanet_pipeline.models import topk_count

    k = topk_count(n, 0.25)
    assert len(tiles) == 2 * min(4, k)
    import cv2

    tile = cv2.imread(str(tmp_path / "top" / "Onco_1.png"))
    assert tile.shape == (256, 256, 3)
    # the first tile is the patch with the highest masked association
    best = coords[int(np.argmax(assoc[0]))]
    with Slide(real_slide) as s:
        ref = s.read_patch(s.plan(0.5, 256), int(best[0]), int(best[1]))
    np.testing.assert_array_equal(tile[..., ::-1], ref)
    assert (tmp_path / "top_patches.png").stat().st_size > 10_000
