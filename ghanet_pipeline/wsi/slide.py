"""Slide access: open any OpenSlide format or DICOM WSI folder, resolve level-0 um/px, read patches at a target um/px.

A DICOM WSI is a folder of instance files (or one of them): OpenSlide reads it from the level-0
``VOLUME`` instance; series OpenSlide cannot decode are read with wsidicom (:mod:`.dicom`), under the
same rules below.

Units: ``x0, y0`` and every ``*_level0`` size are level-0 pixels; ``mpp`` is micrometres per pixel.

Reading at a target um/px (``Slide.plan``):

* the level read is the coarsest pyramid level whose um/px is not coarser than the target (allowing
  :data:`MPP_REL_TOL`); the matching level-0 extent is read there and area-downscaled
  (``cv2.INTER_AREA``) to ``patch_size``; nothing is ever upsampled - a slide coarser than the
  target is a :class:`SlideError`.
* near-matches: a level whose um/px is within ``MPP_REL_TOL`` (2 %) of the target (e.g. 0.499 vs 0.5,
  or 0.505 vs 0.5) is read at exactly ``patch_size`` without resampling; the grid step
  ``patch_size_level0`` is then ``patch_size x level downsample`` so that patches tile exactly
  (the physical patch side differs from 128 um by at most 2 %).

Transparent pixels (alpha 0, e.g. outside the scanned area) are composited onto white. A read that
OpenSlide reports as failed (corrupt tile) raises :class:`SlideError` naming the slide and the
level-0 position - it is never white-filled.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import SlideError
from ..core.slideids import slide_id_from_name
from . import dicom
from .backend import SlideBackend, open_backend
from .rawtiles import RawTileReader

log = logging.getLogger(__name__)

#: relative um/px tolerance inside which a level counts as "at the target" (read without resampling)
MPP_REL_TOL = 0.02
#: plausible range of level-0 um/px read from TIFF resolution tags (outside it the tags are ignored:
#: many writers put 72 dpi or 1 px/unit there by default)
_PLAUSIBLE_MPP = (0.02, 50.0)
#: side (in output/thumbnail pixels) of the blocks read when building a thumbnail
_THUMB_BLOCK = 512
#: and at most this many px (per side) at the pyramid level they are read from
_LEVEL_BLOCK = 4096

MPP_FIX_HINT = "pass --mpp UM_PER_PX (e.g. 0.25 for 40x, 0.5 for 20x) or add an mpp column to the manifest"


@dataclass(frozen=True)
class ReadPlan:
    """How to read one patch of ``patch_size`` px at ``target_mpp`` um/px.

    ``patch_size_level0`` is the patch side in level-0 px (the grid step); the reader reads a
    ``read_size`` x ``read_size`` region at pyramid ``level`` (covering ``patch_size_level0`` level-0
    px) and area-downscales it to ``patch_size`` when ``read_size != patch_size``.
    """

    target_mpp: float
    patch_size: int
    patch_size_level0: int
    level: int
    read_size: int

    @property
    def resamples(self) -> bool:
        return self.read_size != self.patch_size


def _float_prop(props, key: str) -> float | None:
    val = props.get(key)
    if val in (None, ""):
        return None
    try:
        out = float(val)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def resolve_mpp(props, override: float | None = None) -> tuple[float | None, str]:
    """Level-0 um/px and where it came from, from OpenSlide properties (a mapping of str -> str).

    Order: ``override`` > ``openslide.mpp-x/y`` > TIFF resolution tags (``tiff.XResolution`` with
    ``tiff.ResolutionUnit`` centimeter/inch) > objective power (10 / AppMag um/px, estimated).
    Returns ``(None, "")`` when nothing is usable.
    """
    if override is not None:
        return float(override), "override"
    mx, my = _float_prop(props, "openslide.mpp-x"), _float_prop(props, "openslide.mpp-y")
    if mx or my:
        vals = [v for v in (mx, my) if v]
        if len(vals) == 2 and abs(mx - my) / max(mx, my) > MPP_REL_TOL:
            log.warning("um/px differs between x (%.4g) and y (%.4g); using their mean", mx, my)
        return float(np.mean(vals)), "openslide"
    unit = str(props.get("tiff.ResolutionUnit", "")).strip().lower()
    xres, yres = _float_prop(props, "tiff.XResolution"), _float_prop(props, "tiff.YResolution")
    per_unit_um = {"centimeter": 1e4, "cm": 1e4, "inch": 25400.0}.get(unit)
    if per_unit_um and (xres or yres):
        vals = [per_unit_um / v for v in (xres, yres) if v]
        mpp = float(np.mean(vals))
        if _PLAUSIBLE_MPP[0] <= mpp <= _PLAUSIBLE_MPP[1]:
            return mpp, "tiff-resolution"
    power = _float_prop(props, "openslide.objective-power")
    if power:
        return 10.0 / power, "objective-power (estimated)"
    return None, ""


class Slide:
    """One slide reader (:mod:`.backend`: OpenSlide, or wsidicom for DICOM) with a resolved level-0 um/px
    (context manager; one per worker/process).

    ``mpp`` overrides the slide's own scale. Raises :class:`SlideError` when the file is missing, is
    not a slide, or has no resolvable um/px.
    """

    def __init__(self, path: Path | str, mpp: float | None = None, slide_id: str | None = None,
                 raw_tiles: bool = True) -> None:
        self._raw_tiles = bool(raw_tiles)
        self._raw: dict[tuple[int, int], RawTileReader | None] = {}  # (level, read_size) -> RawTileReader | None

        self.path = Path(path)
        self.slide_id = slide_id or slide_id_from_name(self.path.name)
        name = f"slide {self.slide_id!r} ({self.path})"
        self._name = name
        if not self.path.exists():
            raise SlideError(f"{name}: file not found; check the path (relative paths in a manifest are "
                             f"relative to the manifest's folder)")
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise SlideError(f"{name}: the file is empty (0 bytes): a download or copy that failed or was "
                             f"interrupted; fetch it again (GDC: gdc-client download -m MANIFEST.txt, then pass "
                             f"--gdc-manifest MANIFEST.txt to check every file's size and MD5)")
        if self.path.is_dir() and not dicom.is_dicom_folder(self.path) and self.path.suffix.lower() != ".mrxs":
            raise SlideError(f"{name}: is a directory without DICOM files, not a slide (a DICOM WSI is a folder "
                             f"of .dcm instances; other formats are single files)")
        if mpp is not None and not (mpp > 0 and math.isfinite(mpp)):
            raise SlideError(f"{name}: um/px override {mpp!r} must be a positive number")
        self._backend: SlideBackend | None = None
        self._backend, self.reader = open_backend(self.path, name)
        props = self._backend.properties
        self.vendor: str = str(props.get("openslide.vendor", "unknown"))
        self.dimensions: tuple[int, int] = tuple(int(v) for v in self._backend.dimensions)  # type: ignore[assignment]
        self.level_count: int = int(self._backend.level_count)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(map(int, d)) for d in self._backend.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._backend.level_downsamples)
        resolved, source = resolve_mpp(props, mpp)
        if resolved is None:
            self.close()
            raise SlideError(f"{name} has no um/px in its metadata (no openslide.mpp-x, TIFF resolution or "
                             f"objective power); {MPP_FIX_HINT}")
        if source.startswith("objective-power"):
            log.warning("%s: um/px estimated from objective power as %.4g (10 / AppMag); pass --mpp or a "
                        "manifest mpp column if this is wrong", name, resolved)
        self.mpp: float = float(resolved)
        self.mpp_source: str = source

    # -- context manager ------------------------------------------------------------------------------
    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for reader in getattr(self, "_raw", {}).values():
            if reader is not None:
                reader.close()
        self._raw = {}
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()
            self._backend = None

    def __repr__(self) -> str:
        return (f"Slide({self.slide_id!r}, {self.dimensions[0]}x{self.dimensions[1]} px, "
                f"{self.mpp:.4g} um/px from {self.mpp_source}, {self.level_count} levels)")

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._backend.properties)

    def level_mpp(self, level: int) -> float:
        """um/px of a pyramid level."""
        return self.mpp * self.level_downsamples[level]

    # -- planning -------------------------------------------------------------------------------------
    def plan(self, target_mpp: float, patch_size: int) -> ReadPlan:
        """Choose level and read size for ``patch_size`` px patches at ``target_mpp`` um/px."""
        if not (target_mpp > 0 and patch_size >= 1):
            raise SlideError(f"{self._name}: target um/px {target_mpp!r} and patch size {patch_size!r} must be positive")
        if self.mpp > target_mpp * (1 + MPP_REL_TOL):
            raise SlideError(f"{self._name} is scanned at {self.mpp:.4g} um/px ({self.mpp_source}), coarser than "
                             f"the target {target_mpp:g} um/px; patches would have to be upsampled. Use a slide "
                             f"scanned at higher magnification or a larger --target-mpp (if the slide's um/px "
                             f"is wrong, {MPP_FIX_HINT})")
        # coarsest level whose um/px is not coarser than the target (within tolerance)
        usable = [lv for lv in range(self.level_count) if self.level_mpp(lv) <= target_mpp * (1 + MPP_REL_TOL)]
        level = max(usable, key=self.level_mpp)  # level 0 is always usable here
        ds = self.level_downsamples[level]
        if abs(self.level_mpp(level) - target_mpp) <= MPP_REL_TOL * target_mpp:
            read_size = patch_size
            size_level0 = max(1, int(round(patch_size * ds)))
        else:
            size_level0 = max(1, int(round(patch_size * target_mpp / self.mpp)))
            read_size = max(patch_size, int(round(size_level0 / ds)))
        return ReadPlan(target_mpp=float(target_mpp), patch_size=int(patch_size),
                        patch_size_level0=size_level0, level=level, read_size=read_size)

    # -- reading --------------------------------------------------------------------------------------
    def read_region(self, x0: int, y0: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of ``size=(w, h)`` px at ``level``, top-left at level-0 ``(x0, y0)``.

        Transparent pixels become white. A failed read raises :class:`SlideError`.
        """
        import openslide

        if self._backend is None:
            raise SlideError(f"{self._name}: slide is closed")
        try:
            img = self._backend.read_region((int(x0), int(y0)), int(level), (int(size[0]), int(size[1])))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(f"{self._name}: unreadable tile in the region at level-0 (x={x0}, y={y0}), level "
                             f"{level}, size {size[0]}x{size[1]} ({exc}); the file is probably damaged - re-copy "
                             f"or re-export it") from None
        return rgba_to_rgb(np.asarray(img))

    def raw_reader(self, plan: ReadPlan) -> RawTileReader | None:
        """The raw-tile reader for ``plan``'s level when ``read_size`` px is ``k x k`` of its JPEG tiles, else None."""
        key = (plan.level, plan.read_size)
        if key not in self._raw:
            self._raw[key] = (RawTileReader.open(self.path, self.vendor, self.level_dimensions[plan.level],
                                                 self.level_downsamples[plan.level], plan.read_size)
                              if self._raw_tiles else None)
        return self._raw[key]

    def read_patch(self, plan: ReadPlan, x0: int, y0: int) -> np.ndarray:
        """(patch_size, patch_size, 3) uint8 RGB patch whose top-left is level-0 ``(x0, y0)``.

        A patch that is exactly ``k x k`` whole JPEG tiles of the level read (k >= 1) is decoded straight
        from the file (:mod:`.rawtiles`, same pixels as OpenSlide, several times faster); anything else via
        OpenSlide. Either way the region is then area-downscaled to ``patch_size`` when they differ.
        """
        raw = self.raw_reader(plan)
        arr = None
        if raw is not None:
            try:
                arr = raw.read(x0, y0)
            except Exception as exc:  # noqa: BLE001 - a damaged tile: OpenSlide's read reports it properly
                log.debug("%s: raw tile at (%s, %s) not decoded (%s); reading through OpenSlide", self._name, x0, y0, exc)
                arr = None
        if arr is None:
            arr = self.read_region(x0, y0, plan.level, (plan.read_size, plan.read_size))
        if plan.read_size != plan.patch_size:
            import cv2

            arr = cv2.resize(arr, (plan.patch_size, plan.patch_size), interpolation=cv2.INTER_AREA)
        return arr

    def thumbnail(self, target_downsample: float = 32) -> tuple[np.ndarray, float]:
        """Whole-slide RGB thumbnail and its scale (level-0 px per thumbnail px).

        Thumbnail pixel ``(i, j)`` covers level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)`` with
        ``ds = target_downsample``; the last partial thumbnail pixel at the right/bottom edge is dropped
        (at most ``ds`` level-0 px). Read from the best pyramid level in blocks, area-downscaled.
        """
        import cv2

        ds = float(target_downsample)
        if not ds >= 1:
            raise SlideError(f"{self._name}: thumbnail downsample must be >= 1, got {target_downsample!r}")
        w0, h0 = self.dimensions
        tw, th = max(1, int(w0 // ds)), max(1, int(h0 // ds))
        level = int(self._backend.get_best_level_for_downsample(ds))
        lds = self.level_downsamples[level]
        out = np.empty((th, tw, 3), dtype=np.uint8)
        # blocks of at most _THUMB_BLOCK thumbnail px and _LEVEL_BLOCK px at the level read (memory bound
        # for slides without a pyramid)
        step = max(1, min(_THUMB_BLOCK, int(_LEVEL_BLOCK * lds / ds)))
        for ty in range(0, th, step):
            for tx in range(0, tw, step):
                bw, bh = min(step, tw - tx), min(step, th - ty)
                x0, y0 = int(round(tx * ds)), int(round(ty * ds))
                lw = max(1, int(round(bw * ds / lds)))
                lh = max(1, int(round(bh * ds / lds)))
                block = self.read_region(x0, y0, level, (lw, lh))
                if (lw, lh) != (bw, bh):
                    block = cv2.resize(block, (bw, bh), interpolation=cv2.INTER_AREA)
                out[ty:ty + bh, tx:tx + bw] = block
        return out, ds


def rgba_to_rgb(arr: np.ndarray) -> np.ndarray:
    """Composite an RGBA uint8 array (straight alpha, as openslide-python returns) onto white."""
    if arr.ndim == 3 and arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    rgb, alpha = arr[..., :3], arr[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32) / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
