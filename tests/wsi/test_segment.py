"""``ghanet segment`` end to end: outputs and their contract, physical grid at 20x/40x, the real slide,
resume/overwrite, and the bad-input list (asserting the messages)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.core.errors import InputError
from ghanet_pipeline.wsi.inputs import SlideSpec
from ghanet_pipeline.wsi.segment import REQUIRED_ATTRS, SegmentParams, load_coords, segment_slide
from ghanet_pipeline.wsi.slide import Slide


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["segment", *map(str, args), "--no-progress"])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def last_log(out: Path) -> dict:
    logs = sorted((out / "logs").glob("segment-*.json"), key=lambda p: p.stat().st_mtime_ns)
    return json.loads(logs[-1].read_text())


def items(out: Path) -> dict[str, dict]:
    return {r["item"]: r for r in last_log(out)["items"]}


def one_line(text: str) -> str:
    return " ".join(text.split())


# -- outputs --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg20(synthetic_slide_20x, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg20")
    code, output = run(synthetic_slide_20x, "--out", out)
    assert code == 0, output
    return out


def test_writes_three_files_and_summary(seg20, synthetic_slide_20x):
    seg = seg20 / "segment"
    assert sorted(p.name for p in seg.iterdir()) == ["synth20x.coords.h5", "synth20x.geojson", "synth20x.png"]
    rec = items(seg20)["synth20x"]
    assert rec["status"] == "done" and rec["metrics"]["patches"] > 10
    assert rec["metrics"]["mpp_source"] == "openslide" and 0.1 < rec["metrics"]["tissue_mm2"] < 1.0
    assert last_log(seg20)["config"]["patch_size"] == 256


def test_coords_file_contract(seg20):
    coords, attrs = load_coords(seg20 / "segment" / "synth20x.coords.h5")
    assert coords.dtype == np.int64 and coords.ndim == 2 and coords.shape[1] == 2
    for key in REQUIRED_ATTRS:
        assert key in attrs
    assert attrs["complete"] is True and attrs["schema_version"] == 1
    assert (attrs["target_mpp"], attrs["patch_size"], attrs["patch_size_level0"]) == (0.5, 256, 256)
    assert (attrs["level0_mpp"], attrs["mpp_source"], attrs["source_name"]) == (0.5, "openslide", "synth20x.svs")
    assert attrs["sat_threshold"] == 15 and attrs["min_tissue"] == 0.5 and attrs["n_patches"] == len(coords)
    assert np.all(coords % 256 == 0) and np.all(coords + 256 <= 2048)
    with h5py.File(seg20 / "segment" / "synth20x.coords.h5", "r") as f:
        assert f["coords"].chunks[0] >= 256  # blocks of rows, not one row per chunk
        frac = f["tissue_fraction"][()]
    assert frac.shape == (len(coords),) and frac.min() >= 0.5


def test_geojson_is_quppath_style_and_in_level0(seg20):
    geo = json.loads((seg20 / "segment" / "synth20x.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and geo["features"]
    import uuid

    for feat in geo["features"]:
        assert uuid.UUID(feat["id"])  # QuPath parses ids as UUIDs
        assert feat["geometry"]["type"] == "Polygon"
        assert feat["properties"]["objectType"] == "annotation"
        assert feat["properties"]["classification"]["name"] == "Tissue"
        for ring in feat["geometry"]["coordinates"]:
            pts = np.asarray(ring)
            assert len(pts) >= 4 and np.array_equal(pts[0], pts[-1])
            assert pts.min() >= 0 and pts.max() <= 2048
    # the polygons (holes excluded) cover most of every kept patch: rasterise them at 1/8 of level 0
    import cv2

    coords, _ = load_coords(seg20 / "segment" / "synth20x.coords.h5")
    canvas = np.zeros((256, 256), dtype=np.uint8)
    for feat in geo["features"]:
        rings = [np.round(np.asarray(r) / 8).astype(np.int32) for r in feat["geometry"]["coordinates"]]
        cv2.fillPoly(canvas, [rings[0]], 1)
        if rings[1:]:
            cv2.fillPoly(canvas, rings[1:], 0)
    fractions = [canvas[y // 8:(y + 256) // 8, x // 8:(x + 256) // 8].mean() for x, y in coords]
    assert min(fractions) >= 0.4
    assert canvas.mean() < 0.6  # and they are not just the whole slide


def test_qc_png(seg20):
    import cv2

    img = cv2.imread(str(seg20 / "segment" / "synth20x.png"))
    assert img is not None and img.shape[1] <= 1200 and img.shape[0] <= 1200 + 100  # + title lines
    # green contour pixels and blue-tinted kept patches are drawn
    b, g, r = (img[..., i].astype(int) for i in range(3))
    assert ((g > 140) & (r < 60) & (b < 60)).sum() > 50


def test_same_physical_grid_at_20x_and_40x(synthetic_slide_20x, synthetic_slide_40x, tmp_path):
    code, output = run(synthetic_slide_20x, synthetic_slide_40x, "--out", tmp_path)
    assert code == 0, output
    c20, a20 = load_coords(tmp_path / "segment" / "synth20x.coords.h5")
    c40, a40 = load_coords(tmp_path / "segment" / "synth40x.coords.h5")
    assert (a20["patch_size_level0"], a40["patch_size_level0"]) == (256, 512)
    um20 = {tuple(p) for p in (c20 * a20["level0_mpp"]).tolist()}
    um40 = {tuple(p) for p in (c40 * a40["level0_mpp"]).tolist()}
    # one lattice: every patch starts at a multiple of 128 um from the slide origin in both scans
    assert all(x % 128 == 0 and y % 128 == 0 for x, y in um20 | um40)
    # the same patches, up to cells whose tissue fraction or a hole's area sits at a threshold
    # (the two masks come from different pyramid levels)
    assert len(um20) > 10 and len(um20 & um40) >= 0.9 * len(um20 | um40)
    assert a20["tissue_mm2"] == pytest.approx(a40["tissue_mm2"], rel=0.06)


# -- the real slide -----------------------------------------------------------------------------------------
def test_real_slide_patches_on_tissue_inside_slide(real_slide, tmp_path):
    import cv2

    code, output = run(real_slide, "--out", tmp_path)
    assert code == 0, output
    assert "CMU-1-Small-Region" in output
    for suffix in (".geojson", ".coords.h5", ".png"):
        assert (tmp_path / "segment" / f"CMU-1-Small-Region{suffix}").is_file()
    coords, attrs = load_coords(tmp_path / "segment" / "CMU-1-Small-Region.coords.h5")
    assert len(coords) >= 20 and attrs["tissue_mm2"] > 0.3
    with Slide(real_slide) as s:
        w, h = s.dimensions
        assert np.all(coords >= 0) and np.all(coords[:, 0] + 256 <= w) and np.all(coords[:, 1] + 256 <= h)
        plan = s.plan(0.5, 256)
        stained = []
        for x, y in coords:
            patch = s.read_patch(plan, int(x), int(y))
            assert patch.shape == (256, 256, 3)
            stained.append((cv2.cvtColor(patch, cv2.COLOR_RGB2HSV)[..., 1] > 15).mean())
        # grid cells that were not kept and hold no tissue at all by the mask
        kept = {tuple(c) for c in coords.tolist()}
        others = [(x, y) for y in range(0, h - 255, 256) for x in range(0, w - 255, 256) if (x, y) not in kept]
        background = [(cv2.cvtColor(s.read_patch(plan, x, y), cv2.COLOR_RGB2HSV)[..., 1] > 15).mean()
                      for x, y in others]
    # every kept patch is partly stained tissue (edge patches and loose stroma have white gaps),
    # most are mostly tissue, and the rejected cells hold much less stain
    assert min(stained) > 0.2 and np.median(stained) > 0.6
    assert np.median(background) < 0.1


# -- resume / overwrite / batch --------------------------------------------------------------------------------
def test_rerun_skips_mismatch_errors_overwrite_redoes(synthetic_slide_20x, tmp_path):
    assert run(synthetic_slide_20x, "--out", tmp_path)[0] == 0
    coords_file = tmp_path / "segment" / "synth20x.coords.h5"
    mtime = coords_file.stat().st_mtime_ns
    code, _ = run(synthetic_slide_20x, "--out", tmp_path)
    assert code == 0 and items(tmp_path)["synth20x"]["status"] == "skipped"
    assert coords_file.stat().st_mtime_ns == mtime
    code, _ = run(synthetic_slide_20x, "--out", tmp_path, "--patch-size", "224")
    rec = items(tmp_path)["synth20x"]
    assert code == 1 and rec["status"] == "failed"
    assert "other settings" in rec["message"] and "patch_size=256 (now 224)" in rec["message"]
    assert "--overwrite" in rec["message"]
    assert coords_file.stat().st_mtime_ns == mtime
    code, _ = run(synthetic_slide_20x, "--out", tmp_path, "--patch-size", "224", "--overwrite")
    assert code == 0 and items(tmp_path)["synth20x"]["status"] == "done"
    assert load_coords(coords_file)[1]["patch_size"] == 224
    assert not list((tmp_path / "segment").glob(".*.tmp"))


def test_incomplete_output_is_redone(synthetic_slide_20x, tmp_path):
    assert run(synthetic_slide_20x, "--out", tmp_path)[0] == 0
    coords_file = tmp_path / "segment" / "synth20x.coords.h5"
    with h5py.File(coords_file, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(InputError, match="incomplete"):
        load_coords(coords_file)
    assert run(synthetic_slide_20x, "--out", tmp_path)[0] == 0
    assert items(tmp_path)["synth20x"]["status"] == "done"
    assert load_coords(coords_file)[1]["complete"] is True


def test_failing_slide_does_not_stop_others_and_shard(synthetic_slide_20x, tmp_path):
    code, output = run(tmp_path / "missing.svs", synthetic_slide_20x, "--out", tmp_path)
    assert code == 1
    rec = items(tmp_path)
    assert rec["missing"]["status"] == "failed" and rec["synth20x"]["status"] == "done"
    assert "1 of 2 failed" in output
    code, _ = run(tmp_path / "missing.svs", synthetic_slide_20x, "--out", tmp_path / "s", "--shard", "1/2")
    assert code == 0 and list(items(tmp_path / "s")) == ["synth20x"]


# -- bad input ---------------------------------------------------------------------------------------------------
def test_missing_file_message(tmp_path):
    code, output = run(tmp_path / "gone.svs", "--out", tmp_path)
    msg = items(tmp_path)["gone"]["message"]
    assert code == 1 and "gone" in msg and "file not found" in msg
    assert "gone" in output and "failed" in output


def test_not_a_slide_message(tmp_path):
    bad = tmp_path / "readme.svs"
    bad.write_text("hello\n" * 100)
    assert run(bad, "--out", tmp_path)[0] == 1
    assert "not a slide format OpenSlide can read" in items(tmp_path)["readme"]["message"]


def test_truncated_slide_message(synthetic_slide_20x, tmp_path):
    cut = tmp_path / "cut.svs"
    data = synthetic_slide_20x.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    assert run(cut, "--out", tmp_path)[0] == 1
    msg = items(tmp_path)["cut"]["message"]
    assert "'cut'" in msg and ("damaged" in msg or "truncated" in msg or "not a slide" in msg)
    assert not (tmp_path / "segment" / "cut.coords.h5").exists()


def test_no_mpp_message_and_fixes(make_synthetic_slide, tmp_path):
    path = make_synthetic_slide("seg_nometa.tif", 1024, 1024, metadata=False, seed=2)
    assert run(path, "--out", tmp_path)[0] == 1
    msg = items(tmp_path)["seg_nometa"]["message"]
    assert "no um/px" in msg and "--mpp" in msg and "mpp column" in msg
    # fix 1: --mpp
    assert run(path, "--out", tmp_path, "--mpp", "0.5")[0] == 0
    assert load_coords(tmp_path / "segment" / "seg_nometa.coords.h5")[1]["mpp_source"] == "override"
    # fix 2: a manifest mpp column (path relative to the manifest's folder)
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "nm.tif").write_bytes(path.read_bytes())
    man = tmp_path / "m" / "manifest.csv"
    man.parent.mkdir()
    man.write_text("slide_id,path,mpp\nnm,../slides/nm.tif,0.5\n")
    code, output = run("--manifest", man, "--out", tmp_path / "o2")
    assert code == 0, output
    assert load_coords(tmp_path / "o2" / "segment" / "nm.coords.h5")[1]["level0_mpp"] == 0.5


def test_coarser_than_target_message(make_synthetic_slide, tmp_path):
    path = make_synthetic_slide("seg_5x.svs", 512, 512, mpp=2.0, seed=3)
    assert run(path, "--out", tmp_path)[0] == 1
    msg = items(tmp_path)["seg_5x"]["message"]
    assert "2 um/px" in msg and "coarser than the target 0.5 um/px" in msg
    assert run(path, "--out", tmp_path, "--target-mpp", "2.0", "--patch-size", "64")[0] == 0


def test_no_tissue_writes_outputs_exit_0(make_synthetic_slide, tmp_path):
    path = make_synthetic_slide("seg_blank.svs", 1024, 1024, blank=True)
    code, output = run(path, "--out", tmp_path)
    rec = items(tmp_path)["seg_blank"]
    assert code == 0 and rec["status"] == "no tissue" and "no tissue found" in rec["message"]
    coords, attrs = load_coords(tmp_path / "segment" / "seg_blank.coords.h5")
    assert coords.shape == (0, 2) and attrs["n_patches"] == 0
    geo = json.loads((tmp_path / "segment" / "seg_blank.geojson").read_text())
    assert geo["features"] == [] and (tmp_path / "segment" / "seg_blank.png").is_file()
    assert "no tissue" in output


def test_slide_smaller_than_one_patch(make_synthetic_slide, tmp_path):
    path = make_synthetic_slide("seg_tiny.svs", 200, 180, seed=1)
    code, _ = run(path, "--out", tmp_path)
    rec = items(tmp_path)["seg_tiny"]
    assert code == 0 and rec["status"] == "no tissue"
    assert "smaller than one 128 um patch" in rec["message"]


def test_duplicate_slide_id_in_manifest(synthetic_slide_20x, tmp_path):
    man = tmp_path / "dup.csv"
    man.write_text(f"slide_id,path\nA,{synthetic_slide_20x}\nB,{synthetic_slide_20x}\nA,{synthetic_slide_20x}\n")
    code, output = run("--manifest", man, "--out", tmp_path)
    assert code == 2  # a manifest error is a usage error
    assert "row 4" in one_line(output) and "'A' already used in row 2" in one_line(output)
    assert not (tmp_path / "segment").exists()


def test_escaping_slide_id(synthetic_slide_20x, tmp_path):
    out = tmp_path / "out"
    man = tmp_path / "esc.csv"
    man.write_text(f"slide_id,path\n../../evil,{synthetic_slide_20x}\n")
    code, output = run("--manifest", man, "--out", out)
    assert code == 0, output
    written = sorted(p.name for p in (out / "segment").iterdir())
    assert written == ["_.._evil.coords.h5", "_.._evil.geojson", "_.._evil.png"]
    assert not list(tmp_path.glob("evil*")) and not (tmp_path.parent / "evil.coords.h5").exists()
    man.write_text(f"slide_id,path\n..,{synthetic_slide_20x}\n")
    code, output = run("--manifest", man, "--out", out)
    assert code == 1 and "cannot be used as a file name" in one_line(output)
    # the library refuses an unsanitised id too
    spec = SlideSpec(slide_id="../evil", path=synthetic_slide_20x, case_id="x")
    with pytest.raises(InputError, match="not a safe file name"):
        segment_slide(spec, out, SegmentParams())


def test_config_file_sets_options_and_flags_win(synthetic_slide_20x, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("segment:\n  min-tissue-area: 10000000\n  patch-size: 128\n")
    res = CliRunner().invoke(cli, ["--config", str(cfg), "segment", str(synthetic_slide_20x), "--out", str(tmp_path),
                                   "--patch-size", "256", "--no-progress"])
    assert res.exit_code == 0, res.output
    rec = items(tmp_path)["synth20x"]
    assert rec["status"] == "no tissue" and "--min-tissue-area" in rec["message"]
    config = last_log(tmp_path)["config"]
    assert config["min_tissue_area_um2"] == 1e7 and config["patch_size"] == 256


@pytest.mark.parametrize("text, match", [
    ("segmnt:\n  patch-size: 128\n", r"'segmnt' is not a ghanet command \(did you mean 'segment'\?\); top-level keys are command names"),
    ("segment: [1, 2]\n", r"'segment' must hold a mapping of option -> value"),
    ("- segment\n", "must hold a mapping of command name -> options"),
    ("segment: {patch-size: [\n", "cannot read"),
])
def test_bad_config_file_is_a_usage_error(tmp_path, text, match):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    res = CliRunner().invoke(cli, ["--config", str(cfg), "segment", str(tmp_path / "x.svs"), "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert not isinstance(res.exception, AttributeError)
    assert "Invalid value for '--config'" in res.output and re.search(match, one_line(res.output))
    assert not (tmp_path / "logs").exists()  # nothing ran


@pytest.mark.parametrize("value", ["0", "-0.25"])
def test_non_positive_mpp_is_a_usage_error(tmp_path, value):
    code, output = run(tmp_path / "x.svs", "--out", tmp_path, "--mpp", value)
    assert code == 2 and "Invalid value for '--mpp'" in output and ">0" in one_line(output)
    assert not (tmp_path / "logs").exists()  # refused before any slide ran


def test_cli_defaults_are_the_library_defaults():
    """`ghanet segment`'s option defaults equal SegmentParams' (the workflow leaves a key at the library's
    default off the command line, so the two must agree)."""
    from ghanet_pipeline.cli.segment import segment as cmd
    from ghanet_pipeline.wsi.segment import SegmentParams

    lib = SegmentParams()
    names = {"target_mpp": "target_mpp", "patch_size": "patch_size", "sat_threshold": "sat_threshold",
             "min_tissue": "min_tissue", "thumbnail_downsample": "thumbnail_downsample",
             "min_tissue_area": "min_tissue_area_um2", "min_hole_area": "min_hole_area_um2"}
    defaults = {p.name: p.default for p in cmd.params}
    assert {k: defaults[k] for k in names} == {k: getattr(lib, v) for k, v in names.items()}
