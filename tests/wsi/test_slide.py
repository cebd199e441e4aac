"""Slide access: um/px resolution order, read plans at 20x/40x, reading, compositing, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from ghanet_pipeline.core.errors import SlideError
from ghanet_pipeline.wsi.slide import MPP_REL_TOL, Slide, resolve_mpp, rgba_to_rgb


# -- um/px resolution -------------------------------------------------------------------------------------
def test_resolve_mpp_order():
    full = {"openslide.mpp-x": "0.2500", "openslide.mpp-y": "0.2500", "tiff.XResolution": "20000",
            "tiff.YResolution": "20000", "tiff.ResolutionUnit": "centimeter", "openslide.objective-power": "20"}
    assert resolve_mpp(full, override=0.3) == (0.3, "override")
    assert resolve_mpp(full) == (0.25, "openslide")
    no_os = {k: v for k, v in full.items() if not k.startswith("openslide.mpp")}
    assert resolve_mpp(no_os) == pytest.approx((0.5, "tiff-resolution"))
    inch = {"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"}
    assert resolve_mpp(inch) == pytest.approx((0.5, "tiff-resolution"))
    only_power = {"openslide.objective-power": "40", "tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"}
    mpp, src = resolve_mpp(only_power)  # 72 dpi is a writer default, not a scan resolution: ignored
    assert mpp == pytest.approx(0.25) and src == "objective-power (estimated)"
    assert resolve_mpp({"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"}) == (None, "")
    assert resolve_mpp({}) == (None, "")


def test_resolve_mpp_anisotropic_mean_and_bad_values():
    mpp, src = resolve_mpp({"openslide.mpp-x": "0.5", "openslide.mpp-y": "0.52"})
    assert mpp == pytest.approx(0.51) and src == "openslide"
    assert resolve_mpp({"openslide.mpp-x": "nan", "openslide.objective-power": "abc"}) == (None, "")


# -- opening synthetic slides ------------------------------------------------------------------------------
def test_synthetic_20x_and_40x_metadata(synthetic_slide_20x, synthetic_slide_40x):
    with Slide(synthetic_slide_20x) as s20, Slide(synthetic_slide_40x) as s40:
        assert (s20.mpp, s20.mpp_source, s20.dimensions) == (0.5, "openslide", (2048, 2048))
        assert (s40.mpp, s40.mpp_source, s40.dimensions) == (0.25, "openslide", (4096, 4096))
        assert s20.slide_id == "synth20x" and s20.vendor == "aperio"


def test_plan_20x_reads_level0_without_resampling(synthetic_slide_20x):
    with Slide(synthetic_slide_20x) as s:
        plan = s.plan(0.5, 256)
        assert (plan.level, plan.read_size, plan.patch_size_level0) == (0, 256, 256)
        assert not plan.resamples
        patch = s.read_patch(plan, 512, 512)
    assert patch.shape == (256, 256, 3) and patch.dtype == np.uint8


def test_plan_40x_doubles_level0_size_and_downscales(synthetic_slide_40x):
    with Slide(synthetic_slide_40x) as s:
        plan = s.plan(0.5, 256)
        # the 4x pyramid has levels at 0.25 and 1.0 um/px: 1.0 is coarser than the target, so level 0
        assert (plan.level, plan.read_size, plan.patch_size_level0) == (0, 512, 512)
        assert s.read_patch(plan, 1024, 1024).shape == (256, 256, 3)
        # a coarser target uses the coarser level, without resampling when it matches
        plan1 = s.plan(1.0, 256)
        assert (plan1.level, plan1.read_size, plan1.patch_size_level0) == (1, 256, 1024)


def test_same_physical_patch_at_20x_and_40x(synthetic_slide_20x, synthetic_slide_40x):
    """The same 128 um square read from both scans has the same colour (same tissue, same place)."""
    with Slide(synthetic_slide_20x) as s20, Slide(synthetic_slide_40x) as s40:
        p20, p40 = s20.plan(0.5, 256), s40.plan(0.5, 256)
        diffs = []
        for x_um, y_um in [(384, 384), (512, 640), (640, 512), (256, 768)]:
            a = s20.read_patch(p20, int(x_um / 0.5), int(y_um / 0.5)).astype(float)
            b = s40.read_patch(p40, int(x_um / 0.25), int(y_um / 0.25)).astype(float)
            diffs.append(np.abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))).max())
        assert max(diffs) < 6.0
        # and different places differ (the check above is not trivially true)
        a = s20.read_patch(p20, 0, 0).astype(float).mean(axis=(0, 1))
        b = s20.read_patch(p20, int(512 / 0.5), int(512 / 0.5)).astype(float).mean(axis=(0, 1))
        assert np.abs(a - b).max() > 10


def test_level_factor_2_near_match_reads_level_1(make_synthetic_slide):
    path = make_synthetic_slide("lf2_40x.tif", 2048, 2048, mpp=0.25, level_factor=2)
    with Slide(path) as s:
        plan = s.plan(0.5, 128)
        assert (plan.level, plan.read_size, plan.patch_size_level0) == (1, 128, 256)


def test_near_match_tolerance_and_resampling(synthetic_slide_20x):
    with Slide(synthetic_slide_20x, mpp=0.499) as s:  # within tolerance: read as is
        assert s.mpp_source == "override"
        plan = s.plan(0.5, 256)
        assert (plan.read_size, plan.patch_size_level0) == (256, 256)
    with Slide(synthetic_slide_20x, mpp=0.5 * (1 - 2 * MPP_REL_TOL)) as s:  # outside: resample
        plan = s.plan(0.5, 256)
        assert plan.resamples and plan.patch_size_level0 == round(256 * 0.5 / s.mpp) == plan.read_size
        assert s.read_patch(plan, 0, 0).shape == (256, 256, 3)
    with Slide(synthetic_slide_20x, mpp=0.505) as s:  # slightly coarser but within tolerance: allowed
        assert s.plan(0.5, 256).read_size == 256


def test_coarser_than_target_is_an_error(synthetic_slide_20x):
    with Slide(synthetic_slide_20x) as s:
        with pytest.raises(SlideError, match=r"synth20x.*coarser than the target 0.25 um/px"):
            s.plan(0.25, 256)


def test_thumbnail_geometry(synthetic_slide_20x):
    with Slide(synthetic_slide_20x) as s:
        thumb, ds = s.thumbnail(32)
        assert ds == 32 and thumb.shape == (2048 // 32, 2048 // 32, 3) and thumb.dtype == np.uint8
        thumb7, ds7 = s.thumbnail(7.5)
        assert thumb7.shape == (int(2048 // 7.5), int(2048 // 7.5), 3)
        # corners are glass (bright), somewhere there is stained tissue (darker)
        assert thumb[0, 0].min() > 230 and thumb.reshape(-1, 3).min(axis=0).max() < 200


def test_read_outside_slide_is_white(synthetic_slide_20x):
    with Slide(synthetic_slide_20x) as s:
        arr = s.read_region(2048 - 16, 0, 0, (64, 8))
    assert arr.shape == (8, 64, 3)
    assert (arr[:, 20:] == 255).all()  # beyond the slide: transparent -> white


def test_rgba_to_rgb_composites_onto_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = [10, 20, 30, 255]
    rgba[0, 1] = [0, 0, 0, 0]
    rgba[1, 0] = [0, 0, 0, 128]
    rgba[1, 1] = [200, 100, 50, 255]
    rgb = rgba_to_rgb(rgba)
    assert rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[1, 0].tolist() == [127, 127, 127]
    assert rgb[1, 1].tolist() == [200, 100, 50]


def test_objective_power_estimate_warns(make_synthetic_slide, caplog):
    path = make_synthetic_slide("objective_only.svs", 600, 600, metadata="objective")
    with caplog.at_level(logging.WARNING, logger="ghanet_pipeline"):
        with Slide(path) as s:
            assert s.mpp == pytest.approx(0.5) and s.mpp_source == "objective-power (estimated)"
    assert "estimated from objective power" in caplog.text


# -- bad input ---------------------------------------------------------------------------------------------
def test_no_mpp_names_slide_and_both_fixes(make_synthetic_slide):
    path = make_synthetic_slide("nometa.tif", 600, 600, metadata=False)
    with pytest.raises(SlideError) as info:
        Slide(path)
    msg = str(info.value)
    assert "nometa" in msg and "no um/px" in msg and "--mpp" in msg and "mpp column" in msg
    with Slide(path, mpp=0.5) as s:  # the override fixes it
        assert (s.mpp, s.mpp_source) == (0.5, "override")


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match=r"'nothere'.*file not found"):
        Slide(tmp_path / "nothere.svs")


def test_not_a_slide(tmp_path):
    p = tmp_path / "notes.svs"
    p.write_text("this is not an image\n" * 50)
    with pytest.raises(SlideError, match=r"'notes'.*not a slide format"):
        Slide(p)


def test_truncated_slide(tmp_path, synthetic_slide_20x):
    data = synthetic_slide_20x.read_bytes()
    p = tmp_path / "cut.svs"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideError, match=r"'cut'.*(damaged|truncated|not a slide)"):
        with Slide(p) as s:  # either opening fails or reading the missing tiles does
            plan = s.plan(0.5, 256)
            for y in range(0, 2048, 256):
                for x in range(0, 2048, 256):
                    s.read_patch(plan, x, y)


def test_corrupt_tile_raises_with_position(tmp_path, synthetic_slide_20x):
    import tifffile

    p = tmp_path / "corrupt.svs"
    p.write_bytes(synthetic_slide_20x.read_bytes())
    with tifffile.TiffFile(p) as tif:
        page = tif.pages[0]
        tiles_x = -(-page.imagewidth // page.tilewidth)
        idx = 2 * tiles_x + 3  # tile row 2, column 3 -> level-0 (768, 512)
        off, n = page.dataoffsets[idx], page.databytecounts[idx]
    with open(p, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\x00" * n)
    with Slide(p) as s:
        plan = s.plan(0.5, 256)
        assert s.read_patch(plan, 0, 0).shape == (256, 256, 3)  # other tiles still read
        with pytest.raises(SlideError, match=r"'corrupt'.*x=768, y=512.*damaged"):
            s.read_patch(plan, 768, 512)


def test_bad_override_rejected(synthetic_slide_20x):
    with pytest.raises(SlideError, match="positive"):
        Slide(synthetic_slide_20x, mpp=-1.0)


# -- real slide --------------------------------------------------------------------------------------------
def test_real_slide_reads_256_at_half_micron(real_slide: Path):
    with Slide(real_slide) as s:
        assert s.mpp == pytest.approx(0.499) and s.mpp_source == "openslide"
        plan = s.plan(0.5, 256)
        assert (plan.level, plan.read_size, plan.patch_size_level0) == (0, 256, 256)
        patch = s.read_patch(plan, 1024, 1024)
    assert patch.shape == (256, 256, 3) and patch.dtype == np.uint8
    assert patch.std() > 10  # real content, not a blank fill


def test_thumbnail_blocks_bound_memory_without_changing_result(synthetic_slide_20x, monkeypatch):
    """Thumbnails are read in blocks (bounded px per read for slides without a pyramid); the block
    size must not change the result."""
    import ghanet_pipeline.wsi.slide as slide_mod

    with Slide(synthetic_slide_20x) as s:
        whole, _ = s.thumbnail(8)
        monkeypatch.setattr(slide_mod, "_LEVEL_BLOCK", 100)  # 100 level px -> blocks of 50 thumbnail px
        blocked, _ = s.thumbnail(8)
    assert np.array_equal(whole, blocked)
