"""Raw-tile fast path: decoded tiles equal OpenSlide's pixels; everything that is not a whole tile falls back."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from ghanet_pipeline.wsi.rawtiles import RawTileReader
from ghanet_pipeline.wsi.slide import Slide


def _every_block_equals_openslide(path, level: int, tile: int, k: int = 1) -> int:
    """Every ``k x k`` block of tiles whose corner is a tile corner of ``level``: the raw reader's pixels equal
    OpenSlide's where the block is inside the level, and it declines (None) where it is not or where the
    corner is off the tile grid. Returns the number of blocks compared."""
    osr = openslide.OpenSlide(str(path))
    vendor = osr.properties["openslide.vendor"]
    size = k * tile
    reader = RawTileReader.open(path, vendor, osr.level_dimensions[level], osr.level_downsamples[level], size)
    assert reader is not None and reader.tile == tile and reader.k == k and reader.size == size
    ds = osr.level_downsamples[level]
    n = 0
    try:
        for ty in range(0, reader.height, tile):
            for tx in range(0, reader.width, tile):
                x0, y0 = int(round(tx * ds)), int(round(ty * ds))
                got = reader.read(x0, y0)
                inside = tx + size <= reader.width and ty + size <= reader.height
                if not inside or x0 / ds != tx or y0 / ds != ty:
                    assert got is None  # blocks over the edge and inexact positions go to OpenSlide
                    continue
                assert got is not None and got.shape == (size, size, 3)
                want = np.asarray(osr.read_region((x0, y0), level, (size, size)))
                assert (want[..., 3] == 255).all()
                np.testing.assert_array_equal(got, want[..., :3], err_msg=f"{k}x{k} tiles at level {level} ({tx}, {ty})")
                if tx + tile < reader.width:  # one level-px right of the tile grid: not raw
                    assert reader.read(int(round((tx + 1) * ds)), y0) is None
                n += 1
    finally:
        reader.close()
        osr.close()
    return n


def test_real_slide_every_tile_equals_openslide(real_slide):
    """Aperio SVS: RGB JPEG tiles (no colour transform) with shared JPEGTables; 240 px tiles."""
    assert _every_block_equals_openslide(real_slide, 0, 240) >= 100


@pytest.mark.slow  # every block of the slide decoded twice (the single tiles are in the fast tier)
def test_real_slide_every_2x2_and_3x3_block_of_tiles_equals_openslide(real_slide):
    """Patches of 480 / 720 px read at level 0 of the real Aperio slide: 2 x 2 / 3 x 3 whole tiles."""
    assert _every_block_equals_openslide(real_slide, 0, 240, k=2) >= 80
    assert _every_block_equals_openslide(real_slide, 0, 240, k=3) >= 60


def test_synthetic_slide_every_tile_of_every_level_equals_openslide(make_synthetic_slide):
    """YCbCr JPEG tiles, a 3-level pyramid, a size that is not a multiple of the tile (edge tiles)."""
    path = make_synthetic_slide("raw_levels.svs", 2000, 1500, mpp=0.25, phenotype=0.5, seed=3)
    with Slide(path) as s:
        levels = s.level_count
    assert levels >= 2
    counts = [_every_block_equals_openslide(path, lv, 256) for lv in range(levels)]
    assert counts[0] == (2000 // 256) * (1500 // 256)


@pytest.fixture(scope="module")
def slide_40x(make_synthetic_slide):
    """2600 x 2100 px at 0.25 um/px (40x), 256 px JPEG tiles, pyramid downsamples 1 and 4; 2600 and 2100
    are not multiples of 256 or 512 (edge tiles, edge blocks)."""
    return make_synthetic_slide("raw_40x.svs", 2600, 2100, mpp=0.25, phenotype=0.5, seed=7)


@pytest.mark.slow  # every block of a 40x slide decoded twice
def test_synthetic_40x_every_block_of_tiles_equals_openslide(slide_40x):
    """k = 2 (a 20x 256 px patch = 512 level-0 px) at every tile corner of level 0, k = 3 there, k = 2 at level 1."""
    assert _every_block_equals_openslide(slide_40x, 0, 256, k=2) == (2600 // 256 - 1) * (2100 // 256 - 1)
    assert _every_block_equals_openslide(slide_40x, 0, 256, k=3) == (2600 // 256 - 2) * (2100 // 256 - 2)
    assert _every_block_equals_openslide(slide_40x, 1, 256, k=2) == 1  # level 1 is 650 x 525 px


def test_40x_read_patch_reads_2x2_tiles_raw_and_everything_else_through_openslide(slide_40x, monkeypatch):
    """plan(0.5 um/px, 256 px) on the 40x slide reads 512 px at level 0 and downsamples 2x: every patch of
    the 512 px grid anchored at (0, 0) that is inside the slide is raw (no OpenSlide call) and equals the
    OpenSlide-only patch; edge patches and a misaligned grid go through OpenSlide, with equal pixels."""
    with Slide(slide_40x) as fast, Slide(slide_40x, raw_tiles=False) as slow:
        plan = fast.plan(0.5, 256)
        assert (plan.level, plan.read_size, plan.patch_size_level0) == (0, 512, 512)
        raw = fast.raw_reader(plan)
        assert raw is not None and raw.k == 2 and slow.raw_reader(plan) is None
        calls = []
        real = fast.read_region

        def counting(x0, y0, level, size):
            calls.append((x0, y0))
            return real(x0, y0, level, size)

        monkeypatch.setattr(fast, "read_region", counting)
        inside = [(x, y) for y in range(0, 2100 - 511, 512) for x in range(0, 2600 - 511, 512)]
        edge = [(x, y) for y in range(0, 2100, 512) for x in range(0, 2600, 512) if (x, y) not in inside]
        assert len(inside) == 20 and len(edge) == 10
        for x, y in inside + edge:
            got = fast.read_patch(plan, x, y)
            assert got.shape == (256, 256, 3)
            np.testing.assert_array_equal(got, slow.read_patch(plan, x, y), err_msg=f"({x}, {y})")
        assert calls == edge
        calls.clear()
        misaligned = [(x + 128, y + 64) for x, y in inside]
        for x, y in misaligned:
            np.testing.assert_array_equal(fast.read_patch(plan, x, y), slow.read_patch(plan, x, y))
        assert calls == misaligned


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

    from ghanet_pipeline.core.errors import SlideError

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


def test_40x_reader_is_thread_safe_and_decodes_into_a_given_buffer(slide_40x):
    """One reader shared by 4 threads (os.pread, per-call buffers) gives the same 2 x 2 tile patches as serial
    reads; ``out`` is filled in place, a wrong-shaped ``out`` is refused."""
    from concurrent.futures import ThreadPoolExecutor

    with Slide(slide_40x) as s:
        raw = s.raw_reader(s.plan(0.5, 256))
        corners = [(x, y) for y in range(0, 2100 - 511, 256) for x in range(0, 2600 - 511, 256)]
        serial = [raw.read(x, y) for x, y in corners]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(3):
                for (x, y), a, b in zip(corners, serial, pool.map(lambda c: raw.read(*c), corners), strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=f"({x}, {y})")
        out = np.zeros((512, 512, 3), dtype=np.uint8)
        assert raw.read(*corners[5], out=out) is out
        np.testing.assert_array_equal(out, serial[5])
        with pytest.raises(ValueError, match="out must be"):
            raw.read(0, 0, out=np.zeros((256, 256, 3), dtype=np.uint8))
