"""Deep-zoom tile pyramid (DZI, JPEG tiles) of one slide, for the report's viewer.

Tiles come from OpenSlide's ``openslide.deepzoom.DeepZoomGenerator`` (254 px tiles + 1 px overlap,
Lanczos downsampling, the whole level-0 extent). Deep-zoom level ``L`` of a slide whose longer side
needs ``N`` halvings to reach 1 px is the slide downsampled by exactly ``2**(N - L)``; the pyramid
stops at the level chosen by :func:`finest_level` from ``max_mpp`` (``--viewer-max-mpp``). A pyramid cut
``k`` levels above the slide's own resolution is, tile for tile, the DZI of the slide downsampled by
``2**k`` (``ceil(W / 2**k)`` x ``ceil(H / 2**k)`` px), so it is written and described as exactly that:

    <dest>/slide.dzi                 the DZI descriptor (XML) of the pyramid
    <dest>/slide_files/<L>/<c>_<r>.jpeg
    <dest>/pyramid.json              what was built (source file, settings, size); written last

A pyramid is built in a temporary folder beside ``dest`` and renamed into place when complete; a
rebuild is skipped when ``pyramid.json`` says it was made from the same file (name, size, mtime)
with the same settings (:func:`reusable`).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import SlideError
from ..core.files import write_json_atomic

#: version of the layout and of pyramid.json written here
PYRAMID_FORMAT = 1
TILE_SIZE = 254
OVERLAP = 1
JPEG_QUALITY = 80
#: default finest resolution of the viewer in um/px: nuclei are visible, the pyramid is 1/16 of a 40x scan
DEFAULT_MAX_MPP = 1.0
#: tiles per work unit handed to a worker process
CHUNK_TILES = 96
#: tile columns of a work unit (narrow blocks keep the slide tiles they share in OpenSlide's cache)
CHUNK_COLS = 8
#: ending of the temporary folders a build leaves when killed (removed by the next build, under its lock)
TEMP_SUFFIX = ".building.tmp"
#: levels whose finer neighbour has at most this many pixels are made from it in memory (~100 MB of RGB)
MOSAIC_MAX_PX = 32 * 2**20


@dataclass(frozen=True)
class PyramidSettings:
    """How tiles are cut: ``max_mpp`` um/px bounds the finest level (:func:`finest_level`)."""

    max_mpp: float = DEFAULT_MAX_MPP
    tile_size: int = TILE_SIZE
    overlap: int = OVERLAP
    quality: int = JPEG_QUALITY


@dataclass
class Pyramid:
    """A finished pyramid. ``width``/``height``: the slide's level-0 px; ``downsample``: level-0 px per
    pixel of the finest level (a power of two); ``dzi_width``/``dzi_height``: the DZI image size;
    ``max_level``: its finest deep-zoom level; ``finest_mpp``: um/px there; ``bytes`` on disk."""

    dest: Path
    source: dict[str, Any]
    width: int
    height: int
    level0_mpp: float
    downsample: int
    dzi_width: int
    dzi_height: int
    max_level: int
    finest_mpp: float
    tile_size: int
    overlap: int
    quality: int
    n_tiles: int
    bytes: int
    seconds: float
    reused: bool = False

    def tile_source(self, url: str) -> dict[str, Any]:
        """The inline DZI object OpenSeadragon takes instead of fetching ``slide.dzi`` (``url`` = the
        tiles folder relative to the page, ending in ``/``)."""
        return {"Image": {"xmlns": "http://schemas.microsoft.com/deepzoom/2008", "Url": url, "Format": "jpeg",
                          "Overlap": str(self.overlap), "TileSize": str(self.tile_size),
                          "Size": {"Width": str(self.dzi_width), "Height": str(self.dzi_height)}}}


def dz_level_count(width: int, height: int) -> int:
    """Deep-zoom levels of a ``width`` x ``height`` image: 1 x 1 px up to full size."""
    return int(math.ceil(math.log2(max(width, height, 1)))) + 1


def finest_level(width: int, height: int, level0_mpp: float, max_mpp: float) -> tuple[int, int]:
    """``(max_level, k)``: the pyramid keeps deep-zoom levels ``0..max_level``, where the finest one is the
    slide downsampled by ``2**k`` and ``k`` is the largest with ``level0_mpp * 2**k <= max_mpp`` (0 when
    the scan itself is coarser than ``max_mpp``): the coarsest level still at least as sharp as asked."""
    if not (max_mpp > 0 and level0_mpp > 0):
        raise ValueError(f"um/px must be positive (max_mpp={max_mpp!r}, level0_mpp={level0_mpp!r})")
    top = dz_level_count(width, height) - 1
    k = 0
    while k < top and level0_mpp * 2 ** (k + 1) <= max_mpp * (1 + 1e-3):
        k += 1
    return top - k, k


def source_signature(path: Path) -> dict[str, Any]:
    """Name, size and modification time of the slide file (or DICOM folder: of its files)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [p.stat() for p in files]
    return {"name": path.name, "bytes": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def reusable(dest: Path, source: dict[str, Any], settings: PyramidSettings, level0_mpp: float) -> Pyramid | None:
    """The pyramid at ``dest`` when it is complete and was made from ``source`` with ``settings`` (same
    tiles, same finest level), else None."""
    import json

    try:
        rec = json.loads((Path(dest) / "pyramid.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("format") != PYRAMID_FORMAT or rec.get("source") != source:
        return None
    try:
        max_level, _ = finest_level(rec["width"], rec["height"], level0_mpp, settings.max_mpp)
        same = (rec["tile_size"], rec["overlap"], rec["quality"], rec["max_level"], rec["level0_mpp"]) == (
            settings.tile_size, settings.overlap, settings.quality, max_level, level0_mpp)
        if not same or not (Path(dest) / "slide_files" / str(max_level)).is_dir():
            return None
        fields = {k: rec[k] for k in Pyramid.__dataclass_fields__ if k not in ("dest", "reused")}
    except (KeyError, TypeError, ValueError):
        return None
    return Pyramid(dest=Path(dest), reused=True, **fields)


class _OpenSlideView:
    """The calls ``DeepZoomGenerator`` makes, served by our :class:`~ghanet_pipeline.wsi.slide.Slide`
    (OpenSlide or wsidicom underneath; transparent pixels already white)."""

    def __init__(self, slide: Any) -> None:
        self._slide = slide
        self.properties = slide.properties
        self.dimensions = slide.dimensions
        self.level_count = slide.level_count
        self.level_dimensions = slide.level_dimensions
        self.level_downsamples = slide.level_downsamples

    def get_best_level_for_downsample(self, downsample: float) -> int:
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.0001]
        return max(ok, key=lambda i: self.level_downsamples[i]) if ok else 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Any:
        from PIL import Image

        rgb = self._slide.read_region(location[0], location[1], level, size)
        alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
        return Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA")


#: OpenSlide tile cache per open slide while cutting tiles (neighbouring deep-zoom tiles share slide tiles)
CACHE_BYTES = 128 * 2**20


class _Source:
    """A slide opened for tiling: ``slide`` (our reader: um/px, DICOM folders, errors in our words) and
    ``generator``, the deep-zoom generator reading OpenSlide directly for plain slide files (fastest:
    no conversion per tile), else through :class:`_OpenSlideView`."""

    def __init__(self, path: str, mpp: float | None, settings: PyramidSettings) -> None:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        from ..wsi import dicom
        from ..wsi.slide import Slide

        self.slide = Slide(path, mpp=mpp)
        self.native = None
        p = Path(path)
        try:
            if self.slide.reader == "openslide" and p.is_file() and not dicom.is_dicom_file(p):
                self.native = openslide.OpenSlide(str(p))
                if hasattr(openslide, "OpenSlideCache"):  # openslide-python >= 1.3 with OpenSlide >= 4
                    self.native.set_cache(openslide.OpenSlideCache(CACHE_BYTES))
            reader = self.native if self.native is not None else _OpenSlideView(self.slide)
            self.generator = DeepZoomGenerator(reader, tile_size=settings.tile_size, overlap=settings.overlap,
                                               limit_bounds=False)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.native is not None:
            self.native.close()
            self.native = None
        self.slide.close()


_WORKER: dict[str, Any] = {}


def _init_worker(path: str, mpp: float | None, settings: PyramidSettings) -> None:
    _WORKER["source"] = _Source(path, mpp, settings)


def _write_tiles(gen: Any, files_dir: str, level: int, addresses: list[tuple[int, int]], quality: int) -> int:
    """Write the tiles of ``addresses`` at ``level``; return the bytes written."""
    n = 0
    for col, row in addresses:
        out = os.path.join(files_dir, str(level), f"{col}_{row}.jpeg")
        gen.get_tile(level, (col, row)).save(out, "JPEG", quality=quality)
        n += os.path.getsize(out)
    return n


def _worker_tiles(files_dir: str, level: int, addresses: list[tuple[int, int]], quality: int) -> int:
    return _write_tiles(_WORKER["source"].generator, files_dir, level, addresses, quality)


def _chunks(gen: Any, levels: range) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """``(level, tile addresses)`` work units of ``levels``, finest level first (the bulk of the work).

    A unit is a block of ``CHUNK_COLS`` tile columns (rows in order inside it): the slide tiles that
    neighbouring deep-zoom tiles share stay in OpenSlide's tile cache instead of being decoded again."""
    for level in sorted(levels, reverse=True):
        cols, rows = gen.level_tiles[level]
        per = max(1, CHUNK_TILES // CHUNK_COLS)
        for c0 in range(0, cols, CHUNK_COLS):
            for r0 in range(0, rows, per):
                yield level, [(c, r) for r in range(r0, min(rows, r0 + per))
                              for c in range(c0, min(cols, c0 + CHUNK_COLS))]


def split_level(gen: Any, max_level: int) -> int:
    """The finest level made by downsampling the level above in memory (instead of reading the slide):
    the first level whose finer neighbour has at most :data:`MOSAIC_MAX_PX` pixels (-1: none)."""
    for level in range(max_level - 1, -1, -1):
        w, h = gen.level_dimensions[level + 1]
        if w * h <= MOSAIC_MAX_PX:
            return level
    return -1


def _mosaic(files_dir: Path, gen: Any, level: int, settings: PyramidSettings) -> Any:
    """The whole image of deep-zoom ``level`` put together from its tiles on disk (overlaps dropped)."""
    from PIL import Image

    w, h = gen.level_dimensions[level]
    cols, rows = gen.level_tiles[level]
    canvas = Image.new("RGB", (w, h))
    ts, ov = settings.tile_size, settings.overlap
    for r in range(rows):
        for c in range(cols):
            with Image.open(files_dir / str(level) / f"{c}_{r}.jpeg") as tile:
                canvas.paste(tile.convert("RGB"), (c * ts - (ov if c else 0), r * ts - (ov if r else 0)))
    return canvas


def _cut_tiles(image: Any, files_dir: Path, level: int, settings: PyramidSettings) -> int:
    """Write ``image`` (the whole level) as tiles in deep-zoom order and overlap; return the bytes."""
    w, h = image.size
    ts, ov, n = settings.tile_size, settings.overlap, 0
    for r in range(max(1, math.ceil(h / ts))):
        for c in range(max(1, math.ceil(w / ts))):
            x0, y0 = c * ts - (ov if c else 0), r * ts - (ov if r else 0)
            box = (x0, y0, min(w, (c + 1) * ts + ov), min(h, (r + 1) * ts + ov))
            out = files_dir / str(level) / f"{c}_{r}.jpeg"
            image.crop(box).save(out, "JPEG", quality=settings.quality)
            n += out.stat().st_size
    return n


def _write_levels(gen: Any, files_dir: Path, max_level: int, path: str, mpp: float | None,
                  settings: PyramidSettings, workers: int) -> int:
    """Write levels ``0..max_level``: the fine ones tile by tile from the slide (DeepZoomGenerator), the
    small coarse ones by halving the level above in memory (Lanczos). Returns the bytes written."""
    from PIL import Image

    split = split_level(gen, max_level)
    nbytes = _run_chunks(list(_chunks(gen, range(split + 1, max_level + 1))), gen, str(files_dir), path, mpp,
                         settings, workers)
    if split >= 0:
        image = _mosaic(files_dir, gen, split + 1, settings)
        for level in range(split, -1, -1):
            image = image.resize(gen.level_dimensions[level], Image.Resampling.LANCZOS)
            nbytes += _cut_tiles(image, files_dir, level, settings)
    return nbytes


def build_pyramid(slide_path: Path, dest: Path, settings: PyramidSettings = PyramidSettings(),
                  mpp: float | None = None, workers: int = 1) -> Pyramid:
    """The pyramid of ``slide_path`` at ``dest``: reused when :func:`reusable`, else built (``workers``
    processes) in a temporary folder beside ``dest`` and renamed into place. ``mpp`` overrides the
    slide's level-0 um/px. Raises :class:`SlideError` when the slide cannot be read."""
    t0 = time.perf_counter()
    dest = Path(dest)
    source = source_signature(slide_path)
    opened = _Source(str(slide_path), mpp, settings)
    slide, gen = opened.slide, opened.generator
    try:
        level0_mpp = float(slide.mpp)
        width, height = slide.dimensions
        found = reusable(dest, source, settings, level0_mpp)
        if found is not None:
            return found
        max_level, k = finest_level(width, height, level0_mpp, settings.max_mpp)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(dest)
        try:
            files_dir = tmp / "slide_files"
            for level in range(max_level + 1):
                (files_dir / str(level)).mkdir(parents=True)
            n_tiles = sum(c * r for c, r in gen.level_tiles[:max_level + 1])
            nbytes = _write_levels(gen, files_dir, max_level, str(slide_path), mpp, settings, workers)
            dzi_w, dzi_h = gen.level_dimensions[max_level]
            pyr = Pyramid(dest=dest, source=source, width=int(width), height=int(height), level0_mpp=level0_mpp,
                          downsample=2 ** k, dzi_width=int(dzi_w), dzi_height=int(dzi_h), max_level=max_level,
                          finest_mpp=level0_mpp * 2 ** k, tile_size=settings.tile_size, overlap=settings.overlap,
                          quality=settings.quality, n_tiles=n_tiles, bytes=0, seconds=0.0)
            (tmp / "slide.dzi").write_text(_dzi_xml(pyr), encoding="utf-8")
            pyr.bytes = nbytes + (tmp / "slide.dzi").stat().st_size
            pyr.seconds = round(time.perf_counter() - t0, 3)
            record = {k2: v for k2, v in asdict(pyr).items() if k2 not in ("dest", "reused")}
            write_json_atomic(tmp / "pyramid.json", {"format": PYRAMID_FORMAT,
                                                     "generator": "openslide.deepzoom.DeepZoomGenerator", **record})
            replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return pyr
    finally:
        opened.close()


def _run_chunks(work: list[tuple[int, list[tuple[int, int]]]], gen: Any, files_dir: str, path: str,
                mpp: float | None, settings: PyramidSettings, workers: int) -> int:
    """Write every chunk's tiles (inline for one worker, else in ``workers`` spawned processes)."""
    if workers <= 1 or len(work) < 2:
        return sum(_write_tiles(gen, files_dir, lvl, addrs, settings.quality) for lvl, addrs in work)
    ctx = multiprocessing.get_context("spawn")  # the caller may hold torch threads: never fork
    with cf.ProcessPoolExecutor(max_workers=min(workers, len(work)), mp_context=ctx, initializer=_init_worker,
                                initargs=(path, mpp, settings)) as pool:
        futures = [pool.submit(_worker_tiles, files_dir, lvl, addrs, settings.quality) for lvl, addrs in work]
        try:
            return sum(f.result() for f in futures)
        except cf.process.BrokenProcessPool as exc:
            raise SlideError(f"slide {path}: a tile worker died ({exc})") from None


def _dzi_xml(p: Pyramid) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="jpeg" Overlap="{p.overlap}" '
            f'TileSize="{p.tile_size}"><Size Width="{p.dzi_width}" Height="{p.dzi_height}"/></Image>\n')


def temp_dir(dest: Path) -> Path:
    """A new empty folder beside ``dest`` to build it in (readable by others as a plain folder would be:
    a static web server may run as another user)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def replace_dir(tmp: Path, dest: Path) -> None:
    """Rename the finished folder ``tmp`` to ``dest``; an older ``dest`` is moved aside first, then removed."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", suffix=TEMP_SUFFIX, dir=dest.parent))
        os.replace(dest, old)  # replaces the empty folder just made
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
