"""Raw-tile fast path: where a patch is exactly ``k x k`` whole JPEG tiles (k >= 1) of the TIFF level it is
read from, read the tiles' compressed bytes and decode them with libjpeg-turbo (imagecodecs) into their
places in one patch buffer, skipping OpenSlide.

Typical cases: a 20x Aperio SVS with 256 px tiles read as 256 px patches (k = 1), and a 40x SVS
(0.25 um/px, 256 px tiles) read for the 20x grid, where a 256 px patch is 512 level-0 px read at
level 0 (k = 2) and then area-downscaled 2x by the caller, exactly as after an OpenSlide read.

OpenSlide paints every region through its tile cache and cairo (RGBA, premultiplied alpha, then our
RGBA -> RGB step); for a region made of whole, opaque, non-overlapping tiles all of that is a copy of
the decoded tiles. The decoded pixels are identical to OpenSlide's for such a patch: both decode the
same JPEG streams with libjpeg(-turbo)'s default (accurate integer) DCT and fancy upsampling, using
the TIFF's shared ``JPEGTables`` and the colour space named by its ``Photometric`` tag (RGB: no colour
transform, as in Aperio SVS; YCbCr: converted to RGB). The tests compare every tile and every 2 x 2
and 3 x 3 block of tiles of the real test slide and of a synthetic 40x slide, and every tile of every
level of a synthetic pyramid, with OpenSlide's pixels.

Used only when it is certainly the same pixels (anything else goes through OpenSlide):

* vendor ``aperio`` or ``generic-tiff`` (OpenSlide's levels are the file's tiled pyramid pages);
* the level's TIFF page is tiled, JPEG-compressed, 8-bit, 3 samples, contiguous, RGB or YCbCr;
* square tiles and the patch side read at the level is a whole multiple ``k`` of the tile side;
* per patch: the level-0 corner divided by the level's downsample is an exact multiple of the tile
  side (grid anchored on tile boundaries), all ``k x k`` tiles lie inside the level's image (no edge
  tiles: OpenSlide makes their outside transparent) and every one of them has bytes (empty tiles are
  OpenSlide's business).

Thread-safe: the file is read with ``os.pread`` (no shared file position) and every call decodes
into its own buffers. Units: ``x0, y0`` are level-0 pixels; tile indices and sizes are at the read level.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: OpenSlide vendors whose levels are the TIFF's tiled pyramid pages, read without overlap or offsets
RAW_VENDORS = ("aperio", "generic-tiff")
_COLORSPACES = {2: "RGB", 6: "YCBCR"}  # TIFF Photometric -> libjpeg input colour space


class RawTileReader:
    """Decodes patches of ``size`` px = ``k x k`` whole tiles of one TIFF page (one pyramid level).

    Thread-safe: reads with ``os.pread``. Build with :meth:`open`; :meth:`read` returns None for a
    patch that is not exactly ``k x k`` whole tiles.
    """

    def __init__(self, path: Path, fd: int, offsets: np.ndarray, counts: np.ndarray, tile: int,
                 width: int, height: int, downsample: float, tables: bytes | None, colorspace: str,
                 size: int | None = None) -> None:
        self.path, self._fd = Path(path), fd
        self.offsets, self.counts = offsets, counts
        self.tile, self.width, self.height = tile, width, height
        self.downsample, self.tables, self.colorspace = float(downsample), tables, colorspace
        self.size = int(tile if size is None else size)  # patch side read at the level (px)
        if self.size < tile or self.size % tile:
            raise ValueError(f"patch side {self.size} px is not a whole multiple of the tile side {tile} px")
        self.k = self.size // tile  # tiles per patch side
        self.cols = -(-width // tile)

    @classmethod
    def open(cls, path: Path | str, vendor: str, level_dimensions: tuple[int, int], downsample: float,
             read_size: int) -> RawTileReader | None:
        """Reader for the level of ``level_dimensions`` (w, h) when patches of ``read_size`` px there can be
        ``k x k`` whole tiles (``read_size = k * tile``); None when the fast path does not apply (reason
        logged at debug level)."""
        if vendor not in RAW_VENDORS:
            return None
        try:
            import imagecodecs
            import tifffile

            if not hasattr(imagecodecs, "jpeg8_decode"):
                return None
            with tifffile.TiffFile(str(path)) as tif:
                page = next((p for p in tif.pages if p.is_tiled and (p.imagewidth, p.imagelength) == tuple(level_dimensions)), None)
                if page is None:
                    return None
                why = _unsupported(page, read_size)
                if why:
                    log.debug("%s: raw tiles not used (%s)", path, why)
                    return None
                offsets = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                tables = page.jpegtables
                tables = bytes(tables) if tables else None
                colorspace = _COLORSPACES[int(page.photometric)]
                tile = int(page.tilewidth)
            fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except Exception as exc:  # noqa: BLE001 - any trouble here means: let OpenSlide read it
            log.debug("%s: raw tiles not used (%s: %s)", path, type(exc).__name__, exc)
            return None
        return cls(Path(path), fd, offsets, counts, tile, int(level_dimensions[0]), int(level_dimensions[1]),
                   downsample, tables, colorspace, size=int(read_size))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def tile_indices(self, x0: int, y0: int) -> np.ndarray | None:
        """(k, k) indices (row-major, into the page's tile arrays) of the tiles that make up the patch whose
        top-left is level-0 ``(x0, y0)``; None when it is not ``k x k`` whole, non-empty tiles (module doc)."""
        xl, yl = x0 / self.downsample, y0 / self.downsample
        if xl != int(xl) or yl != int(yl):
            return None
        xl, yl = int(xl), int(yl)
        t, n = self.tile, self.size
        if xl % t or yl % t or xl < 0 or yl < 0 or xl + n > self.width or yl + n > self.height:
            return None
        rows = np.arange(yl // t, yl // t + self.k, dtype=np.int64)
        cols = np.arange(xl // t, xl // t + self.k, dtype=np.int64)
        idx = rows[:, None] * self.cols + cols[None, :]
        if idx.max() >= len(self.counts) or (self.counts[idx] <= 0).any():
            return None
        return idx

    def read(self, x0: int, y0: int, out: np.ndarray | None = None) -> np.ndarray | None:
        """(size, size, 3) uint8 RGB of the ``k x k`` tiles at level-0 ``(x0, y0)``, or None (use OpenSlide).

        ``out``: optional C-contiguous uint8 array of that shape to decode into (for k = 1 the decoder
        writes into it directly; for k > 1 each tile is decoded into a scratch tile and copied to its
        place). Raises ``RuntimeError``/``ValueError`` from the decoder for a damaged tile.
        """
        idx = self.tile_indices(int(x0), int(y0))
        if idx is None:
            return None
        if self.k == 1:
            return self._decode(int(idx[0, 0]), out)
        n, t = self.size, self.tile
        if out is None:
            out = np.empty((n, n, 3), dtype=np.uint8)
        elif out.shape != (n, n, 3) or out.dtype != np.uint8:
            raise ValueError(f"out must be ({n}, {n}, 3) uint8, got {out.shape} {out.dtype}")
        scratch = np.empty((t, t, 3), dtype=np.uint8)  # per call: no state shared between threads
        for r in range(self.k):
            for c in range(self.k):
                out[r * t:(r + 1) * t, c * t:(c + 1) * t] = self._decode(int(idx[r, c]), scratch)
        return out

    def _decode(self, idx: int, out: np.ndarray | None) -> np.ndarray:
        """(tile, tile, 3) uint8 RGB of tile ``idx``, decoded into ``out`` when given."""
        import imagecodecs

        data = os.pread(self._fd, int(self.counts[idx]), int(self.offsets[idx]))
        arr = imagecodecs.jpeg8_decode(data, tables=self.tables, colorspace=self.colorspace, outcolorspace="RGB",
                                       out=out)
        if arr.shape != (self.tile, self.tile, 3):
            raise ValueError(f"tile {idx} decoded to shape {arr.shape}, expected ({self.tile}, {self.tile}, 3)")
        return arr


def _unsupported(page: Any, read_size: int) -> str:
    """Why ``page`` cannot serve ``read_size`` px patches as ``k x k`` whole tiles ('' when it can)."""
    if int(page.compression) != 7:
        return f"compression {page.compression!s} is not JPEG"
    tw = int(page.tilewidth)
    if tw != page.tilelength or tw < 1 or read_size < tw or read_size % tw:
        return f"tiles {page.tilewidth}x{page.tilelength} px, patches read at {read_size} px (not k x k tiles)"
    if int(page.photometric) not in _COLORSPACES:
        return f"photometric {page.photometric!s}"
    if page.samplesperpixel != 3 or page.bitspersample != 8 or int(page.planarconfig) != 1:
        return "not 8-bit contiguous RGB"
    if getattr(page, "tiledepth", 1) not in (0, 1):
        return "3-D tiles"
    return ""
