"""Synthetic H&E-like whole-slide images: pyramidal tiled JPEG TIFFs that OpenSlide opens as Aperio.

Used by the tests and the demo. The tissue *geometry* (blobs, holes, dense regions) is defined on a
physical grid (:data:`FIELD_UM` um per cell) from the seed alone, so a 20x (0.5 um/px) and a 40x
(0.25 um/px) slide with the same seed and the same physical size show the same tissue at the same
place in micrometres. Pixel texture (nuclei) is drawn at the slide's own resolution with physical
sizes (nuclei of a few um).

``phenotype`` in [0, 1] is the share of tissue covered by dense, dark-nuclei regions (0 = none,
1 = all tissue): patches from such a slide are darker and more purple on average, which later stages
use to plant a survival signal.

Writing is vectorised (strips of 256 rows, tiled textures; no per-pixel Python loops): a 4000x4000
slide takes about 1 s of CPU time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.files import atomic_path

#: physical size (um) of one cell of the coarse random fields that define the tissue geometry
FIELD_UM = 16.0
#: physical side (um) of the repeating nuclei texture tile
TEXTURE_UM = 512.0

# colours (RGB): background glass, eosin-pink stroma, haematoxylin-purple nuclei
_BG = np.array([243.0, 242.0, 245.0], dtype=np.float32)
_BG_U8 = np.round(_BG).astype(np.uint8)
_STROMA = np.array([232.0, 163.0, 196.0], dtype=np.float32)
_DENSE_STROMA = np.array([196.0, 128.0, 178.0], dtype=np.float32)
_NUCLEUS = np.array([84.0, 44.0, 134.0], dtype=np.float32)

METADATA_KINDS = ("aperio", "resolution", "objective", "none")


@dataclass(frozen=True)
class TissueFields:
    """Coarse physical fields (one cell = FIELD_UM um): tissue alpha, dense-region weight, both in [0, 1]."""

    tissue: np.ndarray
    dense: np.ndarray
    field_um: float = FIELD_UM


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_cells: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed white noise."""
    import cv2

    pad = int(3 * sigma_cells) + 1
    raw = rng.standard_normal((shape[0] + 2 * pad, shape[1] + 2 * pad)).astype(np.float32)
    sm = cv2.GaussianBlur(raw, (0, 0), sigmaX=sigma_cells, borderType=cv2.BORDER_REFLECT)[pad:-pad, pad:-pad]
    sm -= sm.mean()
    return sm / (sm.std() + 1e-8)


def tissue_fields(width_um: float, height_um: float, phenotype: float = 0.0, seed: int = 0) -> TissueFields:
    """Tissue and dense-region fields for a slide of the given physical size (deterministic in ``seed``).

    Tissue: 2-5 elliptical blobs with ragged, noise-modulated edges, a margin of white glass around them
    and a few small holes (lumens). Dense regions cover a share ``phenotype`` of the tissue.
    """
    if not 0.0 <= phenotype <= 1.0:
        raise ValueError(f"phenotype must be in [0, 1], got {phenotype}")
    fw = max(2, int(math.ceil(width_um / FIELD_UM)) + 1)
    fh = max(2, int(math.ceil(height_um / FIELD_UM)) + 1)
    rng = np.random.default_rng([int(seed), 7001])
    yy, xx = np.mgrid[0:fh, 0:fw].astype(np.float32)
    xx *= FIELD_UM
    yy *= FIELD_UM
    ext = min(width_um, height_um)
    env = np.zeros((fh, fw), dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        r = ext * rng.uniform(0.10, 0.22)
        ax = rng.uniform(0.6, 1.0)
        th = rng.uniform(0, np.pi)
        cx = rng.uniform(0.22, 0.78) * width_um
        cy = rng.uniform(0.22, 0.78) * height_um
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(th) + dy * np.sin(th)) / r
        v = (-dx * np.sin(th) + dy * np.cos(th)) / (r * ax)
        env = np.maximum(env, 1.0 - (u * u + v * v))
    edge_noise = _smooth_noise(rng, (fh, fw), sigma_cells=max(1.0, 60.0 / FIELD_UM))
    level = env + 0.18 * edge_noise
    # soft edge a few cells wide, then holes: smooth high noise peaks punched out of the tissue
    tissue = np.clip((level - 0.05) / 0.1, 0.0, 1.0)
    hole_noise = _smooth_noise(rng, (fh, fw), sigma_cells=max(1.0, 40.0 / FIELD_UM))
    holes = np.clip((hole_noise - 2.3) / 0.2, 0.0, 1.0)
    tissue *= 1.0 - holes
    # keep a margin of glass at the slide border
    margin = 0.06 * ext
    inside = (xx > margin) & (xx < width_um - margin) & (yy > margin) & (yy < height_um - margin)
    tissue *= inside
    dense_noise = _smooth_noise(rng, (fh, fw), sigma_cells=max(1.0, 120.0 / FIELD_UM))
    in_tissue = tissue > 0.5
    if phenotype <= 0.0 or not in_tissue.any():
        dense = np.zeros_like(tissue)
    elif phenotype >= 1.0:
        dense = np.ones_like(tissue)
    else:
        q = float(np.quantile(dense_noise[in_tissue], phenotype))
        dense = np.clip((q - dense_noise) / 0.15 + 0.5, 0.0, 1.0)
    return TissueFields(tissue=tissue.astype(np.float32), dense=dense.astype(np.float32))


def _nuclei_texture(rng: np.random.Generator, side: int, mpp: float, per_mm2: float, radius_um: float,
                    darkness: tuple[float, float]) -> np.ndarray:
    """Tileable (wrap-around) float32 image in [0, 1]: nuclei intensity at ``mpp`` um/px."""
    import cv2

    area_mm2 = (side * mpp / 1000.0) ** 2
    n = max(1, int(rng.poisson(per_mm2 * area_mm2)))
    r_px = max(1, int(round(radius_um / mpp)))
    pad = 2 * r_px + 2
    img = np.zeros((side + 2 * pad, side + 2 * pad), dtype=np.float32)
    ys = rng.integers(0, side, n)
    xs = rng.integers(0, side, n)
    vals = rng.uniform(*darkness, n).astype(np.float32)
    np.maximum.at(img, (ys + pad, xs + pad), vals)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r_px + 1, int(2 * r_px * 0.75) + 1))
    img = cv2.dilate(img, kernel)
    # wrap the padding around so the tile repeats seamlessly
    core = img[pad:-pad, pad:-pad].copy()
    core[:pad, :] = np.maximum(core[:pad, :], img[-pad:, pad:-pad][:pad])
    core[-pad:, :] = np.maximum(core[-pad:, :], img[:pad, pad:-pad][-pad:])
    core[:, :pad] = np.maximum(core[:, :pad], img[pad:-pad, -pad:][:, :pad])
    core[:, -pad:] = np.maximum(core[:, -pad:], img[pad:-pad, :pad][:, -pad:])
    core = cv2.GaussianBlur(core, (0, 0), sigmaX=max(0.5, 0.6 / mpp), borderType=cv2.BORDER_REFLECT)
    return np.clip(core, 0.0, 1.0)


class _Renderer:
    """Renders RGB strips of one pyramid level from the physical fields and tiled textures."""

    def __init__(self, fields: TissueFields, width: int, height: int, mpp: float, seed: int) -> None:
        import cv2

        self.fields, self.width, self.height, self.mpp = fields, width, height, mpp
        rng = np.random.default_rng([int(seed), 7002])
        side = int(min(4096, max(64, round(TEXTURE_UM / mpp))))
        self.side = side
        # nuclei are drawn at 0.5 um/px at most (cost independent of magnification), then resized
        tex_mpp = max(mpp, 0.5)
        tex_side = int(min(4096, max(64, round(TEXTURE_UM / tex_mpp))))
        self.sparse = _nuclei_texture(rng, tex_side, tex_mpp, per_mm2=2200, radius_um=2.8, darkness=(0.35, 0.8))
        self.dense_tex = _nuclei_texture(rng, tex_side, tex_mpp, per_mm2=9000, radius_um=3.4, darkness=(0.7, 1.0))
        if tex_side != side:
            self.sparse = cv2.resize(self.sparse, (side, side), interpolation=cv2.INTER_LINEAR)
            self.dense_tex = cv2.resize(self.dense_tex, (side, side), interpolation=cv2.INTER_LINEAR)
        grain = (rng.standard_normal((side, side)).astype(np.float32) * 6.0)
        grain = cv2.GaussianBlur(grain, (0, 0), sigmaX=0.7)[..., None]
        # two tileable colour textures: normal tissue (pink stroma, sparse nuclei) and dense regions
        nuc_s, nuc_d = self.sparse[..., None], self.dense_tex[..., None]
        self.normal = np.clip(_STROMA * (1 - nuc_s) + _NUCLEUS * nuc_s + 1.3 * grain, 0, 255).astype(np.uint8)
        self.dense = np.clip(_DENSE_STROMA * (1 - nuc_d) + _NUCLEUS * nuc_d + 1.3 * grain, 0, 255).astype(np.uint8)

    def level_textures(self, ds: float) -> tuple[np.ndarray, np.ndarray]:
        """The two colour textures at a pyramid level (area-averaged, so mean colours match level 0)."""
        import cv2

        if ds <= 1.0:
            return self.normal, self.dense
        s = max(4, int(round(self.side / ds)))
        return (cv2.resize(self.normal, (s, s), interpolation=cv2.INTER_AREA),
                cv2.resize(self.dense, (s, s), interpolation=cv2.INTER_AREA))

    def strips(self, lw: int, lh: int, ds: float, rows: int, pad_w: int) -> Iterator[np.ndarray]:
        """RGB uint8 strips (rows, pad_w, 3) covering the level (padding: background colour)."""
        import cv2

        normal, dense = self.level_textures(ds)
        s = normal.shape[0]
        lmpp = self.mpp * ds
        # field coordinates (cell units) of pixel centres, separable linear interpolation
        fx = (np.arange(lw, dtype=np.float64) + 0.5) * lmpp / self.fields.field_um
        fw = self.fields.tissue.shape[1]
        jx = np.clip(np.floor(fx).astype(np.int64), 0, fw - 2)
        wx = np.clip(fx - jx, 0.0, 1.0).astype(np.float32)
        bg = np.empty((rows, lw, 3), dtype=np.uint8)
        bg[...] = _BG_U8
        for y0 in range(0, lh, rows):
            n = min(rows, lh - y0)
            fy = (np.arange(y0, y0 + n, dtype=np.float64) + 0.5) * lmpp / self.fields.field_um
            fh = self.fields.tissue.shape[0]
            iy = np.clip(np.floor(fy).astype(np.int64), 0, fh - 2)
            wy = np.clip(fy - iy, 0.0, 1.0).astype(np.float32)[:, None]
            out = np.empty((rows, pad_w, 3), dtype=np.uint8)
            out[...] = _BG_U8
            # only the columns whose coarse field rows hold tissue are rendered
            frows = np.maximum(self.fields.tissue[iy], self.fields.tissue[iy + 1]).max(axis=0)
            has = np.nonzero((frows[jx] > 0) | (frows[jx + 1] > 0))[0]
            if has.size == 0:
                yield out
                continue
            c0, c1 = int(has[0]), int(has[-1]) + 1
            cw = c1 - c0
            t = self._interp(self.fields.tissue, iy, wy, jx[c0:c1], wx[c0:c1])
            d = self._interp(self.fields.dense, iy, wy, jx[c0:c1], wx[c0:c1])
            ridx = np.arange(y0, y0 + n) % s
            k0 = c0 % s
            reps = int(math.ceil((k0 + cw) / s))
            tex_n = np.ascontiguousarray(np.tile(normal[ridx], (1, reps, 1))[:, k0:k0 + cw])
            tex_d = np.ascontiguousarray(np.tile(dense[ridx], (1, reps, 1))[:, k0:k0 + cw])
            # per-pixel blends in OpenCV (uint8, SIMD): tissue = lerp(normal, dense, d); lerp(glass, tissue, t)
            tissue = cv2.blendLinear(tex_n, tex_d, 1.0 - d, d)
            out[:n, c0:c1] = cv2.blendLinear(bg[:n, :cw], tissue, 1.0 - t, t)
            yield out

    @staticmethod
    def _interp(field: np.ndarray, iy: np.ndarray, wy: np.ndarray, jx: np.ndarray, wx: np.ndarray) -> np.ndarray:
        rows = field[iy] * (1.0 - wy) + field[iy + 1] * wy
        return rows[:, jx] * (1.0 - wx) + rows[:, jx + 1] * wx


def _tiles(strips: Iterator[np.ndarray], tile: int, pad_w: int) -> Iterator[np.ndarray]:
    for strip in strips:
        for x in range(0, pad_w, tile):
            yield strip[:, x:x + tile]


def _description(kind: str, width: int, height: int, lw: int, lh: int, tile: int, mpp: float, level: int) -> str | None:
    if kind in ("none", "resolution"):
        return None
    mag = 10.0 / mpp
    mag_txt = f"{mag:.0f}" if abs(mag - round(mag)) < 1e-6 else f"{mag:.3g}"
    head = f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q=90"
    if level > 0:
        head += f" -> {lw}x{lh}"
    fields = f"|AppMag = {mag_txt}"
    if kind == "aperio":
        fields += f"|MPP = {mpp:.6g}"
    return head + fields + "|Filename = ghanet-synthetic"


def write_synthetic_slide(path: Path | str, width: int, height: int, mpp: float = 0.5, phenotype: float = 0.0,
                          seed: int = 0, metadata: bool | str = True, tile: int = 256,
                          level_factor: int = 4, quality: int = 85, blank: bool = False) -> Path:
    """Write a pyramidal tiled-JPEG TIFF of ``width`` x ``height`` level-0 px at ``mpp`` um/px.

    ``metadata``: ``True``/``"aperio"`` = Aperio description with AppMag and MPP plus TIFF resolution
    tags (OpenSlide: vendor aperio, mpp, objective power); ``"objective"`` = Aperio description with
    AppMag only (um/px only estimable from the objective power); ``"resolution"`` = no Aperio
    description, TIFF resolution tags in px/cm (generic-tiff); ``False``/``"none"`` = neither (um/px
    unresolvable without an override). Lower levels (downsample ``level_factor``**k) are tiled IFDs in
    the main chain, down to about one tile. ``blank=True`` writes empty glass (no tissue). Written
    atomically. Returns the path.
    """
    import tifffile

    kind = {True: "aperio", False: "none"}.get(metadata, metadata)  # type: ignore[arg-type]
    if kind not in METADATA_KINDS:
        raise ValueError(f"metadata must be True, False or one of {METADATA_KINDS}, got {metadata!r}")
    if width < 1 or height < 1 or not mpp > 0:
        raise ValueError("width, height and mpp must be positive")
    path = Path(path)
    fields = tissue_fields(width * mpp, height * mpp, phenotype=phenotype, seed=seed)
    if blank:
        fields = TissueFields(tissue=np.zeros_like(fields.tissue), dense=np.zeros_like(fields.dense))
    renderer = _Renderer(fields, width, height, mpp, seed)
    levels = [(width, height, 1.0)]
    ds = level_factor
    while min(width // ds, height // ds) >= max(tile, 64) and level_factor > 1:
        levels.append((width // ds, height // ds, float(ds)))
        ds *= level_factor
    bigtiff = width * height * 3 > 2**31
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            for li, (lw, lh, lds) in enumerate(levels):
                pad_w = int(math.ceil(lw / tile)) * tile
                lmpp = mpp * lds
                kwargs: dict = {}
                if kind in ("aperio", "resolution"):
                    kwargs["resolution"] = (1e4 / lmpp, 1e4 / lmpp)
                    kwargs["resolutionunit"] = "CENTIMETER"
                else:
                    kwargs["resolution"] = None
                desc = _description(kind, width, height, lw, lh, tile, mpp, li)
                if desc is not None:
                    kwargs["description"] = desc
                tif.write(_tiles(renderer.strips(lw, lh, lds, tile, pad_w), tile, pad_w),
                          shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                          compression="jpeg", compressionargs={"level": quality}, metadata=None,
                          subfiletype=0 if li == 0 else 1, **kwargs)
    return path


def dense_fraction(fields: TissueFields, coords_level0: np.ndarray, size_level0: int, mpp: float) -> np.ndarray:
    """Per patch, the share of its area covered by dense dark-nuclei tissue (mean of ``tissue * dense``
    over the patch), from the slide's fields. ``coords_level0`` (N, 2) top-left (x, y) and
    ``size_level0`` in level-0 px of a slide at ``mpp`` um/px (the truth behind the phenotype knob)."""
    coords = np.asarray(coords_level0, dtype=np.float64).reshape(-1, 2)
    prod = fields.tissue * fields.dense
    step = fields.field_um / mpp  # level-0 px per field cell
    out = np.zeros(len(coords), dtype=np.float64)
    for i, (x, y) in enumerate(coords):
        # field samples whose cell centres fall inside the patch (at least the nearest one)
        c0, c1 = int(np.floor(x / step)), int(np.ceil((x + size_level0) / step))
        r0, r1 = int(np.floor(y / step)), int(np.ceil((y + size_level0) / step))
        win = prod[max(0, r0):max(r0 + 1, min(r1, prod.shape[0])), max(0, c0):max(c0 + 1, min(c1, prod.shape[1]))]
        out[i] = float(win.mean()) if win.size else 0.0
    return out
