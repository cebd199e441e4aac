"""Raw-tile fast path: decoded tiles equal OpenSlide's pixels; everything that is not a whole tile falls back."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from ghanet_pipeline.wsi.rawtiles import RawTileReader
from ghanet_pipeline.wsi.slide import Slide


def _every_tile_equals_openslide(path, level: int, tile: int) -> int:
    osr = openslide.OpenSlide(str(path))
    vendor = osr.properties["openslide.vendor"]
    reader = RawTileReader.open(path, vendor, osr.level_dimensions[level], osr.level_downsamples[level], tile)
    assert reader is not None and reader.tile == tile
    ds = osr.level_downsamples[level]
    n = 0
    try:
        for ty in range(0, reader.height, tile):
            for tx in range(0, reader.width, tile):
                x0, y0 = int(round(tx * ds)), int(round(ty * ds))
                got = reader.read(x0, y0)
                inside = tx + tile <= reader.width and ty + tile <= reader.height
                if not inside or x0 / ds != tx or y0 / ds != ty:
                    assert got is None  # edge tiles and inexact positions go to OpenSlide
                    continue
                assert got is not None
                want = np.asarray(osr.read_region((x0, y0), level, (tile, tile)))
                assert (want[..., 3] == 255).all()
                np.testing.assert_array_equal(got, want[..., :3], err_msg=f"tile at level {level} ({tx}, {ty})")
                n += 1
    finally:
        reader.close()
        osr.close()
    return n


def test_real_slide_every_tile_equals_openslide(real_slide):
    """Aperio SVS: RGB JPEG tiles (no colour transform) with shared JPEGTables; 240 px tiles."""
    assert _every_tile_equals_openslide(real_slide, 0, 240) >= 100


def test_synthetic_slide_every_tile_of_every_level_equals_openslide(make_synthetic_slide):
    """YCbCr JPEG tiles, a 3-level pyramid, a size that is not a multiple of the tile (edge tiles)."""
    path = make_synthetic_slide("raw_levels.svs", 2000, 1500, mpp=0.25, phenotype=0.5, seed=3)
    with Slide(path) as s:
        levels = s.level_count
    assert levels >= 2
    counts = [_every_tile_equals_openslide(path, lv, 256) for lv in range(levels)]
    assert counts[0] == (2000 // 256) * (1500 // 256)


def test_read_patch_uses_raw_tiles_only_for_whole_tiles(make_synthetic_slide, monkeypatch):
    path = make_synthetic_slide("raw_patch.svs", 1280, 1024, mpp=0.5, phenotype=0.3, seed=5)
    with Slide(path) as fast, Slide(path, raw_tiles=False) as slow:
        plan = fast.plan(0.5, 256)
        raw = fast.raw_reader(plan)
        assert raw is not None and slow.raw_reader(plan) is None
        calls = {"osr": 0}
        real = fast.read_region

        def counting(*a, **k):
            calls["osr"] += 1
            return real(*a, **k)

        monkeypatch.setattr(fast, "read_region", counting)
        for x, y in [(0, 0), (256, 512), (1024, 768)]:  # whole tiles: no OpenSlide call
            np.testing.assert_array_equal(fast.read_patch(plan, x, y), slow.read_patch(plan, x, y))
        assert calls["osr"] == 0
        for x, y in [(128, 0), (1100, 900)]:  # not on the tile grid / over the edge: OpenSlide
            np.testing.assert_array_equal(fast.read_patch(plan, x, y), slow.read_patch(plan, x, y))
        assert calls["osr"] == 2
        # another patch size at the same level (tiles 256, patches 128): no raw reader
        assert fast.raw_reader(fast.plan(0.5, 128)) is None


def test_damaged_tile_falls_back_to_openslide_which_reports_it(make_synthetic_slide, tmp_path):
    import shutil

    import tifffile

    from ghanet_pipeline.errors import SlideError

    src = make_synthetic_slide("raw_bad_src.svs", 1280, 1024, mpp=0.5, phenotype=0.3, seed=5)
    bad = tmp_path / "bad.svs"
    shutil.copy(src, bad)
    with tifffile.TiffFile(bad) as tif:
        page = tif.pages[0]
        offset, nbytes = page.dataoffsets[6], page.databytecounts[6]  # tile (1, 1) of 5 across
    with open(bad, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * min(nbytes, 64))
    with Slide(bad) as s:
        plan = s.plan(0.5, 256)
        with pytest.raises(SlideError, match="x=256, y=256"):
            s.read_patch(plan, 256, 256)
