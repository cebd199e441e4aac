"""Raw-tile fast path: where a patch is exactly one JPEG tile of the TIFF level it is read from, read
the tile's compressed bytes and decode them with libjpeg-turbo (imagecodecs), skipping OpenSlide.

OpenSlide paints every region through its tile cache and cairo (RGBA, premultiplied alpha, then our
RGBA -> RGB step); for a patch that *is* a tile all of that is a copy of the decoded tile. The decoded
pixels are identical to OpenSlide's for such a patch: both decode the same JPEG stream with
libjpeg(-turbo)'s default (accurate integer) DCT and fancy upsampling, using the TIFF's shared
``JPEGTables`` and the colour space named by its ``Photometric`` tag (RGB: no colour transform, as in
Aperio SVS; YCbCr: converted to RGB). The tests compare every tile of the real test slide and of
synthetic slides with OpenSlide's pixels.

Used only when it is certainly the same tile (anything else goes through OpenSlide):

* vendor ``aperio`` or ``generic-tiff`` (OpenSlide's levels are the file's tiled pyramid pages);
* the level's TIFF page is tiled, JPEG-compressed, 8-bit, 3 samples, contiguous, RGB or YCbCr;
* the patch side read at the level equals the tile side (square tiles), the level-0 corner divided by
  the level's downsample is an exact multiple of the tile side (grid anchored on tile boundaries),
  the tile lies inside the level's image (no edge tiles: OpenSlide makes their outside transparent)
  and the tile has bytes (empty tiles are OpenSlide's business).

Units: ``x0, y0`` are level-0 pixels; tile indices are at the read level.
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
    """Decodes whole tiles of one TIFF page (one pyramid level). Thread-safe: reads with ``os.pread``.

    Build with :meth:`open`; :meth:`read` returns None for a patch that is not exactly one tile.
    """

    def __init__(self, path: Path, fd: int, offsets: np.ndarray, counts: np.ndarray, tile: int,
                 width: int, height: int, downsample: float, tables: bytes | None, colorspace: str) -> None:
        self.path, self._fd = Path(path), fd
        self.offsets, self.counts = offsets, counts
        self.tile, self.width, self.height = tile, width, height
        self.downsample, self.tables, self.colorspace = float(downsample), tables, colorspace
        self.cols = -(-width // tile)

    @classmethod
    def open(cls, path: Path | str, vendor: str, level_dimensions: tuple[int, int], downsample: float,
             read_size: int) -> RawTileReader | None:
        """Reader for the level of ``level_dimensions`` (w, h) when patches of ``read_size`` px there can be
        whole tiles; None when the fast path does not apply (reason logged at debug level)."""
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
                   downsample, tables, colorspace)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def tile_index(self, x0: int, y0: int) -> int | None:
        """Index of the tile whose top-left is level-0 ``(x0, y0)``; None when there is none (see module doc)."""
        xl, yl = x0 / self.downsample, y0 / self.downsample
        if xl != int(xl) or yl != int(yl):
            return None
        xl, yl = int(xl), int(yl)
        t = self.tile
        if xl % t or yl % t or xl < 0 or yl < 0 or xl + t > self.width or yl + t > self.height:
            return None
        idx = (yl // t) * self.cols + xl // t
        if idx >= len(self.counts) or self.counts[idx] <= 0:
            return None
        return idx

    def read(self, x0: int, y0: int, out: np.ndarray | None = None) -> np.ndarray | None:
        """(tile, tile, 3) uint8 RGB of the tile at level-0 ``(x0, y0)``, or None (use OpenSlide).

        ``out``: optional C-contiguous uint8 array of that shape to decode into (no extra copy).
        Raises ``RuntimeError``/``ValueError`` from the decoder for a damaged tile.
        """
        idx = self.tile_index(int(x0), int(y0))
        if idx is None:
            return None
        import imagecodecs

        data = os.pread(self._fd, int(self.counts[idx]), int(self.offsets[idx]))
        arr = imagecodecs.jpeg8_decode(data, tables=self.tables, colorspace=self.colorspace, outcolorspace="RGB",
                                       out=out)
        if arr.shape != (self.tile, self.tile, 3):
            raise ValueError(f"tile {idx} decoded to shape {arr.shape}, expected ({self.tile}, {self.tile}, 3)")
        return arr


def _unsupported(page: Any, read_size: int) -> str:
    """Why ``page`` cannot serve ``read_size`` px patches as whole tiles ('' when it can)."""
    if int(page.compression) != 7:
        return f"compression {page.compression!s} is not JPEG"
    if page.tilewidth != page.tilelength or page.tilewidth != read_size:
        return f"tiles {page.tilewidth}x{page.tilelength} px, patches read at {read_size} px"
    if int(page.photometric) not in _COLORSPACES:
        return f"photometric {page.photometric!s}"
    if page.samplesperpixel != 3 or page.bitspersample != 8 or int(page.planarconfig) != 1:
        return "not 8-bit contiguous RGB"
    if getattr(page, "tiledepth", 1) not in (0, 1):
        return "3-D tiles"
    return ""
