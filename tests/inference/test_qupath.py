"""Per-patch scores as QuPath GeoJSON (inference/qupath.py, written by predict --heatmaps)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ghanet_pipeline.inference import heatmaps as hm
from ghanet_pipeline.inference.qupath import patch_feature_collection, write_patch_geojson


def test_feature_collection_is_one_square_detection_per_patch_in_level0_px(tmp_path):
    coords = np.array([[0, 0], [512, 0], [1024, 512]])
    w = np.array([0.2, 0.5, 0.3])
    a = np.array([0.0, 1.0, np.nan])
    path = write_patch_geojson(tmp_path / "s.geojson", coords, 512, {"attention": w, "assoc_Onco": a}, "s1")
    fc = json.loads(path.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 3
    for (x, y), f, wi in zip(coords.tolist(), fc["features"], w, strict=True):
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        ring = f["geometry"]["coordinates"][0]
        assert ring == [[x, y], [x + 512, y], [x + 512, y + 512], [x, y + 512], [x, y]]  # closed square
        assert f["properties"]["objectType"] == "detection"
        assert f["properties"]["measurements"]["attention"] == pytest.approx(wi)
    assert "assoc_Onco" not in fc["features"][2]["properties"]["measurements"]  # NaN left out, JSON stays valid
    with pytest.raises(ValueError, match="2 values for 3 patches"):
        patch_feature_collection(coords, 512, {"x": np.ones(2)})


def test_case_heatmaps_write_geojson_with_attention_and_family_scores(make_synthetic_slide, tmp_path):
    from ghanet_pipeline.wsi.inputs import SlideSpec
    from ghanet_pipeline.wsi.segment import SegmentParams, load_coords, segment_slide

    slide = make_synthetic_slide("qp_slide.tif", 1536, 1536, mpp=0.5, phenotype=0.5, seed=3)
    res = segment_slide(SlideSpec(slide_id="qp", path=slide, case_id="c1"), tmp_path, SegmentParams())
    coords, attrs = load_coords(tmp_path / "segment" / "qp.coords.h5")
    n = len(coords)
    rng = np.random.default_rng(0)
    w_mor = rng.dirichlet(np.ones(n))
    assoc = np.zeros((2, n))
    assoc[0, :2] = [0.7, 0.3]
    scores = [hm.SlideScores("qp", slide, coords, w_mor, assoc, n_case=n, patch_size_level0=attrs["patch_size_level0"]),
              hm.SlideScores("gone", None, coords[:3], w_mor[:3], assoc[:, :3], n_case=n, patch_size_level0=512)]
    out = hm.write_case_heatmaps(tmp_path / "hm", "c1", scores, ["Oncogenesis", "Tumor Suppression"], 0.5, 256, 0.2)
    assert res.ok and (tmp_path / "hm" / "qp.geojson") in out.files and (tmp_path / "hm" / "gone.geojson") in out.files
    fc = json.loads((tmp_path / "hm" / "qp.geojson").read_text())
    got = np.array([f["geometry"]["coordinates"][0][0] for f in fc["features"]])
    assert np.array_equal(got, coords)
    size = attrs["patch_size_level0"]
    corners = [f["geometry"]["coordinates"][0][2] for f in fc["features"]]
    assert corners == [[x + size, y + size] for x, y in coords.tolist()]
    m = [f["properties"]["measurements"] for f in fc["features"]]
    assert set(m[0]) == {"attention", "assoc_Oncogenesis", "assoc_Tumor_Suppression"}  # names as the PNGs'
    assert np.allclose([x["attention"] for x in m], w_mor) and m[0]["assoc_Oncogenesis"] == pytest.approx(0.7)
    assert (tmp_path / "hm" / "qp_assoc_Tumor_Suppression.png").is_file()


def test_dense_fraction_follows_the_phenotype_knob():
    from ghanet_pipeline.wsi.synthetic import dense_fraction, tissue_fields

    coords = np.array([(x, y) for y in range(0, 2048, 256) for x in range(0, 2048, 256)])
    low = dense_fraction(tissue_fields(1024, 1024, 0.1, seed=2), coords, 256, 0.5)
    high = dense_fraction(tissue_fields(1024, 1024, 0.9, seed=2), coords, 256, 0.5)
    assert ((low >= 0) & (low <= 1)).all() and high.mean() > 3 * low.mean() and (high >= low - 1e-6).mean() > 0.9
