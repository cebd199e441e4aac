"""ghanet report without a browser: pyramid levels and tiles, patch-grid placement, layer values, c-index
intervals, the pinned OpenSeadragon copy, the report of a small real run (links, data, reuse, pruning, CLI)."""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from ghanet_pipeline.core.errors import GhanetError
from ghanet_pipeline.report import layers as L
from ghanet_pipeline.report import pyramid as PYR
from ghanet_pipeline.report import vendor
from ghanet_pipeline.report.gather import option_rows
from ghanet_pipeline.report.stats import cindex_interval

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- pyramid


def test_finest_level_stops_at_the_coarsest_level_still_as_sharp_as_asked():
    assert PYR.dz_level_count(1, 1) == 1 and PYR.dz_level_count(2220, 2967) == 13  # 2**12 >= 2967
    top = 12
    assert PYR.finest_level(2220, 2967, 0.499, 1.0) == (top - 1, 1)  # 0.998 um/px
    assert PYR.finest_level(2220, 2967, 0.499, 0.25) == (top, 0)  # asked finer than the scan: level 0
    assert PYR.finest_level(2220, 2967, 0.25, 1.0) == (top - 2, 2)  # 40x scan at 1 um/px: 1/16 of the pixels
    assert PYR.finest_level(2220, 2967, 0.25, 0.9) == (top - 1, 1)  # 1.0 would be coarser than asked
    assert PYR.finest_level(2220, 2967, 2.0, 1.0) == (top, 0)
    with pytest.raises(ValueError):
        PYR.finest_level(10, 10, 0.5, 0.0)


def _tile(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def test_pyramid_is_deepzoom_of_the_slide_and_is_reused(tmp_path, synthetic_slide_20x):
    """Tile grid = DeepZoomGenerator's at every kept level, pixels = its tiles, finest level at the asked
    um/px; a rerun reuses it untouched; other settings or a changed file rebuild it."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    dest = tmp_path / "pyr"
    pyr = PYR.build_pyramid(synthetic_slide_20x, dest, PYR.PyramidSettings(max_mpp=1.0))
    gen = DeepZoomGenerator(openslide.OpenSlide(str(synthetic_slide_20x)), tile_size=254, overlap=1,
                            limit_bounds=False)
    assert (pyr.downsample, pyr.finest_mpp, pyr.max_level) == (2, 1.0, gen.level_count - 2)
    assert (pyr.dzi_width, pyr.dzi_height) == gen.level_dimensions[pyr.max_level] == (1024, 1024)
    levels = sorted(int(d.name) for d in (dest / "slide_files").iterdir())
    assert levels == list(range(pyr.max_level + 1))
    for lv in levels:
        cols, rows = gen.level_tiles[lv]
        assert len(list((dest / "slide_files" / str(lv)).glob("*.jpeg"))) == cols * rows
    split = PYR.split_level(gen, pyr.max_level)
    for lv in (pyr.max_level, split):  # one level read from the slide, one made by halving in memory
        mine, ref = _tile(dest / "slide_files" / str(lv) / "0_0.jpeg"), np.asarray(gen.get_tile(lv, (0, 0)))
        assert mine.shape == ref.shape and np.abs(mine - ref).mean() < 4.0, (lv, np.abs(mine - ref).mean())
    assert '<Size Width="1024" Height="1024"/>' in (dest / "slide.dzi").read_text()
    assert pyr.n_tiles == sum(c * r for c, r in gen.level_tiles[:pyr.max_level + 1])
    stamp = (dest / "pyramid.json").stat().st_mtime_ns
    again = PYR.build_pyramid(synthetic_slide_20x, dest, PYR.PyramidSettings(max_mpp=1.0))
    assert again.reused and (dest / "pyramid.json").stat().st_mtime_ns == stamp
    full = PYR.build_pyramid(synthetic_slide_20x, dest, PYR.PyramidSettings(max_mpp=0.5))
    assert not full.reused and full.downsample == 1 and full.max_level == gen.level_count - 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(PYR.TEMP_SUFFIX)]


def test_a_failed_pyramid_build_leaves_the_old_one(tmp_path, synthetic_slide_20x, monkeypatch):
    dest = tmp_path / "pyr"
    old = PYR.build_pyramid(synthetic_slide_20x, dest, PYR.PyramidSettings(max_mpp=1.0))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PYR, "_write_levels", boom)
    with pytest.raises(OSError, match="disk full"):
        PYR.build_pyramid(synthetic_slide_20x, dest, PYR.PyramidSettings(max_mpp=0.5))
    assert PYR.reusable(dest, old.source, PYR.PyramidSettings(max_mpp=1.0), old.level0_mpp) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyr"]  # no temporary folder left


# --------------------------------------------------------------------------- layers


def test_patches_sit_on_the_grid_cells_of_their_level0_position():
    g = L.patch_grid(np.array([[512, 0], [0, 256], [768, 512]]), 256)  # segment's grid: anchored at (0, 0)
    assert g.origin == (0, 0) and (g.cols, g.rows) == (4, 3) and not g.snapped
    assert g.col.tolist() == [2, 0, 3] and g.row.tolist() == [0, 1, 2]
    g = L.patch_grid(np.array([[100, 37], [356, 37], [100, 293]]), 256)  # CLAM-like grid from a contour corner
    assert g.origin == (100, 37) and g.col.tolist() == [0, 1, 0] and g.row.tolist() == [0, 0, 1] and not g.snapped
    g = L.patch_grid(np.array([[100, 37], [356, 37], [230, 293]]), 256)  # one patch off the shared grid
    assert g.snapped and g.col.tolist() == [0, 1, 0]


def test_layers_from_predict_geojson_are_shown_times_n_with_family_names(tmp_path):
    from ghanet_pipeline.inference.qupath import write_patch_geojson

    coords = np.array([[0, 0], [512, 0], [0, 512]])
    write_patch_geojson(tmp_path / "a.geojson", coords, 512, {
        "attention": np.array([0.5, 0.25, 0.25]), "assoc_Tumor_Supp": np.array([1.0, 0.0, 0.0])}, slide_id="a")
    write_patch_geojson(tmp_path / "b.geojson", coords[:1], 512, {
        "attention": np.array([0.9]), "assoc_Tumor_Supp": np.array([0.5])}, slide_id="b")
    a = L.slide_layers("a", tmp_path / "a.geojson", None, None, n_case=4, families=["Tumor Supp"])
    b = L.slide_layers("b", tmp_path / "b.geojson", None, None, n_case=4, families=["Tumor Supp"])
    L.share_scales([a, b])
    assert [x.key for x in a.layers] == ["attention", "assoc_Tumor_Supp"]
    assert a.layers[1].name == "Tumor Supp association" and a.layers[1].masked and not a.layers[0].masked
    np.testing.assert_allclose(a.layers[0].values, [2.0, 1.0, 1.0])
    assert a.layers[0].vmax == pytest.approx(3.6) and b.layers[1].vmax == pytest.approx(4.0)  # shared per case
    data = L.page_data(a)
    assert data["layers"][1]["top"] == [0] and data["layers"][0]["top"] == [0, 1, 2]
    assert data["patches"]["col"] == [0, 1, 0] and data["grid"]["step"] == 512
    with pytest.raises(GhanetError, match="rerun `ghanet predict --heatmaps"):
        (tmp_path / "bad.geojson").write_text("{}")
        L.slide_layers("c", tmp_path / "bad.geojson", None, None, 1, [])


# --------------------------------------------------------------------------- numbers and options


def test_cindex_interval_contains_the_index_and_follows_the_signal():
    rng = np.random.default_rng(0)
    t = rng.exponential(30, 80)
    e = (rng.random(80) < 0.7).astype(int)
    good = cindex_interval(t, e, -t + rng.normal(0, 5, 80), n_boot=300)
    assert good.lo < good.c_index < good.hi and good.lo > 0.7 and good.n_used == 300
    noise = cindex_interval(t, e, rng.normal(0, 1, 80), n_boot=300)
    assert noise.lo < 0.5 < noise.hi
    none = cindex_interval([1.0, 2.0], [0, 0], [0.1, 0.2], n_boot=10)
    assert none.c_index is None and none.lo is None


def test_option_sources_recorded_default_or_set():
    rows = option_rows({"lr": 5e-4, "epochs": 2, "dim": 512, "folds": None},
                       {"lr": "explicit"}, {"epochs": 20, "dim": 512, "lr": None})
    assert {r["option"]: r["source"] for r in rows} == {"lr": "explicit", "epochs": "set (default: 20)",
                                                          "dim": "default", "folds": ""}


# --------------------------------------------------------------------------- the pinned viewer library


def test_bundled_openseadragon_is_the_pinned_release_and_is_package_data(tmp_path, monkeypatch):
    rec = vendor.openseadragon_record()
    assert rec["version"] == "6.1.1" and rec["license"].startswith("BSD-3-Clause")
    assert len(rec["npm_tarball_sha1"]) == 40 and rec["npm_tarball_integrity"].startswith("sha512-")
    have = vendor.check_vendored()
    assert {"openseadragon.min.js", "LICENSE.txt", "images/home_rest.png"} <= set(have)
    assert "openseadragon 6.1.1" in (vendor.VENDOR_DIR / "openseadragon.min.js").read_text()[:100]
    # a changed byte is refused before anything is copied into a report
    copy = tmp_path / "osd"
    shutil.copytree(vendor.VENDOR_DIR, copy)
    (copy / "openseadragon.min.js").write_text("/* patched */", encoding="utf-8")
    monkeypatch.setattr(vendor, "VENDOR_DIR", copy)
    with pytest.raises(GhanetError, match="not the pinned release.*openseadragon.min.js"):
        vendor.install(tmp_path / "assets")
    assert not (tmp_path / "assets").exists()
    # `pip install .` ships every file the report needs (setup.cfg package_data)
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["ghanet_pipeline.report"].split("\n") if p.strip()]
    pkg = REPO / "ghanet_pipeline" / "report"
    needed = [p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file() and p.suffix != ".py"
              and "__pycache__" not in p.parts]
    missing = [n for n in needed if not any(fnmatch.fnmatch(n, pat) for pat in patterns)]
    assert needed and not missing, missing


# --------------------------------------------------------------------------- the report of a small run


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v:
                self.urls.append(v)


def _local_targets(page: Path) -> list[Path]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    for u in parser.urls:
        assert not re.match(r"^[a-z]+://", u) and not u.startswith("//"), (page, u)  # nothing from outside
    return [(page.parent / unquote(u.split("#")[0])).resolve() for u in parser.urls
            if not u.startswith(("#", "data:"))]


def test_report_of_a_small_run(report_run):
    rep: Path = report_run["report"]
    res = report_run["result"]
    assert res.ok and [p.slide_id for p in res.pages] == ["NEW-A", "NEW-B"]
    assert all(p.status == "done" and p.pyramid.finest_mpp == 1.0 for p in res.pages)
    html = (rep / "index.html").read_text()
    metrics = json.loads((report_run["out"] / "train" / "ghanet" / "metrics.json").read_text())
    assert "Training run <code>ghanet</code>" in html and "Training run <code>abmil</code>" in html
    assert "Models compared" in html and f"{metrics['c_index_pooled']:.3f}" in html
    assert "OpenSeadragon 6.1.1" in html and "sha256 " in html and "set (default: 20)" in html
    for page in [rep / "index.html", *sorted((rep / "slides").glob("*.html"))]:
        for target in _local_targets(page):
            assert target.is_file(), (page, target)  # every link, script, style and image is in the folder
    data = (rep / "slides" / "NEW-A" / "data.js").read_text()
    assert data.startswith("window.GHANET_SLIDE = ")
    d = json.loads(data[len("window.GHANET_SLIDE = "):].rstrip().rstrip(";"))
    rec = json.loads((report_run["out"] / "predict" / "NEW-A.json").read_text())
    att = next(x for x in d["layers"] if x["key"] == "attention")
    planted = report_run["planted"]
    assert att["top"][0] == planted["index"] and att["values"][planted["index"]] == pytest.approx(
        0.95 * rec["n_patches"], rel=1e-3)
    assert (d["patches"]["x"][planted["index"]], d["patches"]["y"][planted["index"]]) == (planted["x"], planted["y"])
    assert d["pyramid"]["tile_source"]["Image"]["Url"] == "../pyramids/NEW-A/slide_files/"
    assert {x["key"] for x in d["layers"]} >= {"attention", "assoc_Tumor_Suppression"} and d["tissue"]
    assert len(list((rep / "slides" / "NEW-A" / "top").glob("*.jpeg"))) >= 4
    assert oct((rep / "pyramids" / "NEW-A").stat().st_mode)[-3:] != "700"  # readable by a web server


def test_report_rerun_reuses_pyramids_and_prunes_gone_slides(report_run, tmp_path):
    from click.testing import CliRunner

    from ghanet_pipeline.cli import cli

    out = tmp_path / "out"
    shutil.copytree(report_run["out"], out)
    (out / "predict" / "NEW-B.json").unlink()
    os.makedirs(out / "report" / "pyramids" / f".NEW-A.x{PYR.TEMP_SUFFIX}")  # left by a killed build
    r = CliRunner().invoke(cli, ["report", str(out), "--workers", "1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report" / "report.json").read_text())
    assert [(p["slide_id"], p["pyramid_reused"]) for p in rep["pages"]] == [("NEW-A", True)]
    assert not (out / "report" / "slides" / "NEW-B.html").exists() and not (out / "report" / "pyramids" / "NEW-B").exists()
    assert sorted(p.name for p in (out / "report" / "pyramids").iterdir()) == ["NEW-A"]
    assert "index.html" in r.output and re.search(r"report: .*index\.html \([0-9.]+ (kB|MB) in \d+ files", r.output)
    # full resolution on request; then a rerun without the option keeps it
    r = CliRunner().invoke(cli, ["report", str(out), "--viewer-max-mpp", "0.5", "--workers", "1"])
    assert r.exit_code == 0 and json.loads((out / "report" / "report.json").read_text())["viewer_max_mpp"] == 0.5
    assert json.loads((out / "report" / "pyramids" / "NEW-A" / "pyramid.json").read_text())["downsample"] == 1
    r = CliRunner().invoke(cli, ["report", str(out), "--workers", "1"])
    assert r.exit_code == 0 and json.loads((out / "report" / "report.json").read_text())["pages"][0]["pyramid_reused"]
    # a slide file that moved: its page fails with the fix, the rest of the report is written, exit 1
    rec = json.loads((out / "predict" / "NEW-A.json").read_text())
    rec["slide_paths"] = {"NEW-A": str(tmp_path / "moved.tif")}
    (out / "predict" / "NEW-A.json").write_text(json.dumps(rec))
    r = CliRunner().invoke(cli, ["report", str(out), "--workers", "1"])
    assert r.exit_code == 1 and "not found" in r.output and "--manifest" in r.output
    assert "not found" in (out / "report" / "index.html").read_text()
    # predicted from a bag alone (no slide file recorded): no page, not an error
    rec["slide_paths"] = {}
    (out / "predict" / "NEW-A.json").write_text(json.dumps(rec))
    r = CliRunner().invoke(cli, ["report", str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "no slide file" in (out / "report" / "index.html").read_text()
    assert not list((out / "report" / "slides").glob("*.html"))
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "not a folder" in r.output
