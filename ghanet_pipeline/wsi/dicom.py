"""DICOM whole-slide images as users hold them: one folder of instances (or one instance file) = one slide.

A DICOM WSI (VL Whole Slide Microscopy Image storage, DICOM Supplement 145) is a series of instance
files: one per pyramid level (``ImageType`` value 3 ``VOLUME``) plus ``LABEL``, ``OVERVIEW`` and
``THUMBNAIL`` images, which are never slides. This module reads only headers (pydicom, imported on
use): it finds the level-0 ``VOLUME`` instance to hand to OpenSlide (which finds the other instances
of the series in the same folder), and says in plain words why a DICOM file is not a slide we read.

When OpenSlide cannot decode a conformant series (e.g. RLE or JPEG-LS frames), :class:`WsiDicomReader`
reads it with ``wsidicom`` behind the same OpenSlide-like interface (level-0 coordinates, RGBA out).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import SlideError

log = logging.getLogger(__name__)

VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: a few SOP classes users meet, for messages (others are named by UID)
SOP_NAMES = {
    VL_WSI: "VL Whole Slide Microscopy Image",
    "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image",
}
NOT_SLIDES = ("LABEL", "OVERVIEW", "THUMBNAIL")
CONVERT_HINT = ("convert the slide to DICOM WSI (VL Whole Slide Microscopy Image, Supplement 145; e.g. "
                "'wsidicomizer -i SLIDE -o FOLDER') or export it from the scanner software as SVS/TIFF")


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or any file with the DICM marker at byte 128 (archives often drop the ending)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    if path.suffix:  # other endings are other formats; only ending-less files are sniffed
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """DICOM files directly inside ``folder`` (not hidden), sorted."""
    folder = Path(folder)
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and is_dicom_file(p))
    except OSError:
        return []


def is_dicom_folder(folder: Path) -> bool:
    return Path(folder).is_dir() and bool(dicom_files(folder))


@dataclass
class Instance:
    """What one DICOM file's header says (sizes in px; ``flavor`` = ImageType value 3, upper case)."""

    path: Path
    sop_class: str = ""
    series_uid: str = ""
    flavor: str = ""
    width: int = 0
    height: int = 0
    transfer_syntax: str = ""
    missing: list[str] = field(default_factory=list)

    @property
    def sop_name(self) -> str:
        return SOP_NAMES.get(self.sop_class, f"SOP class {self.sop_class or 'unknown'}")


def _pixel_spacing(ds) -> object:
    for seq_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(seq_name)
        if seq:
            pm = seq[0].get("PixelMeasuresSequence")
            if pm and pm[0].get("PixelSpacing"):
                return pm[0].PixelSpacing
    return ds.get("PixelSpacing")


def _pixel_data_cut(path: Path, pos: int, implicit: bool) -> bool:
    """True when the file stops before the end of its PixelData element (or before PixelData at all).

    ``pos`` is where pydicom stopped reading the header (the PixelData tag, when there is one).
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(pos)
        head = fh.read(12)
        if head[:4] != b"\xe0\x7f\x10\x00":
            return True
        start = pos + (8 if implicit else 12)
        length = int.from_bytes(head[4:8] if implicit else head[8:12], "little")
        if length != 0xFFFFFFFF:
            return start + length > size
        fh.seek(max(size - 8, 0))  # encapsulated frames end with a sequence delimiter item
        return fh.read(8) != b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def read_instance(path: Path) -> Instance:
    """Header of one DICOM file; a file pydicom cannot parse raises :class:`SlideError` (damaged)."""
    import pydicom

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            pos = fh.tell()
    except Exception as exc:  # noqa: BLE001 - InvalidDicomError, EOFError, struct errors ...
        raise SlideError(f"{path}: the DICOM file cannot be parsed ({type(exc).__name__}: {exc}); it looks "
                         f"damaged or truncated - re-copy or re-export it") from None
    implicit = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")) == "1.2.840.10008.1.2"
    if str(ds.get("SOPClassUID", "")) == VL_WSI and _pixel_data_cut(path, pos, implicit):
        raise SlideError(f"{path}: the DICOM file ends before its pixel data does; it is truncated - re-copy or "
                         f"re-export it")
    meta = getattr(ds, "file_meta", None)
    inst = Instance(path=path, sop_class=str(ds.get("SOPClassUID", "") or (meta and meta.get("MediaStorageSOPClassUID")) or ""),
                    series_uid=str(ds.get("SeriesInstanceUID", "")),
                    transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta is not None else "")
    image_type = list(ds.get("ImageType") or [])
    inst.flavor = str(image_type[2]).upper() if len(image_type) >= 3 else ""
    inst.width = int(ds.get("TotalPixelMatrixColumns") or 0)
    inst.height = int(ds.get("TotalPixelMatrixRows") or 0)
    if inst.sop_class == VL_WSI:
        if len(image_type) < 3:
            inst.missing.append("ImageType (value 3: VOLUME / LABEL / OVERVIEW / THUMBNAIL)")
        if inst.flavor not in NOT_SLIDES:
            if _pixel_spacing(ds) is None:
                inst.missing.append("PixelSpacing (Shared Functional Groups > Pixel Measures)")
            for key in ("TotalPixelMatrixColumns", "TotalPixelMatrixRows", "Rows", "Columns"):
                if not ds.get(key):
                    inst.missing.append(key)
    return inst


def describe(inst: Instance) -> str:
    """Why ``inst`` is not a slide ghanet reads, and how to convert it."""
    if inst.sop_class != VL_WSI:
        return (f"{inst.path} is a DICOM {inst.sop_name} ({inst.sop_class or 'no SOPClassUID'}), not a VL Whole "
                f"Slide Microscopy Image; ghanet reads whole-slide images only: {CONVERT_HINT}")
    if inst.missing:
        return (f"{inst.path} is a DICOM VL Whole Slide Microscopy Image without {', '.join(inst.missing)}, which "
                f"a whole-slide reader needs (the file itself is intact); re-export it with these attributes or "
                f"{CONVERT_HINT}")
    return f"{inst.path} is a DICOM {inst.flavor or 'WSI'} image"


def volume_instance(path: Path, name: str) -> Path:
    """The level-0 ``VOLUME`` instance of the slide at ``path`` (a folder of instances or one of its files).

    Raises :class:`SlideError` naming what was found when the folder holds no readable WSI series,
    or holds several (one folder per slide).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    files = dicom_files(folder)
    if not files:
        raise SlideError(f"{name}: no DICOM files in {folder}")
    instances = [read_instance(f) for f in files]
    wsi = [i for i in instances if i.sop_class == VL_WSI]
    volumes = [i for i in wsi if i.flavor == "VOLUME" and not i.missing]
    if not volumes:
        bad = [i for i in wsi if i.missing] or [i for i in instances if i.sop_class != VL_WSI] or instances
        found = ", ".join(sorted({i.flavor or "no ImageType" for i in wsi})) if wsi else "none"
        raise SlideError(f"{name}: not a format we read - {describe(bad[0])} (VL WSI image types found: {found})")
    series = sorted({i.series_uid for i in volumes})
    if len(series) > 1:
        raise SlideError(f"{name}: {folder} holds {len(series)} DICOM WSI series ({', '.join(series)}); put each "
                         f"slide's instances in a folder of its own")
    best = max(volumes, key=lambda i: i.width * i.height)
    if not path.is_dir() and path != best.path:
        log.info("%s: %s is a %s instance; reading the series from its level-0 instance %s", name, path.name,
                 read_instance(path).flavor or "DICOM", best.path.name)
    return best.path


class WsiDicomReader:
    """The OpenSlide calls :class:`~.slide.Slide` uses, served by ``wsidicom`` (level-0 coordinates, RGBA)."""

    def __init__(self, folder: Path) -> None:
        from wsidicom import WsiDicom

        self._wsi = WsiDicom.open(str(folder))
        levels = sorted(self._wsi.levels, key=lambda lv: lv.size.width, reverse=True)
        self._levels = levels
        w0 = levels[0].size.width
        self.dimensions = (int(levels[0].size.width), int(levels[0].size.height))
        self.level_count = len(levels)
        self.level_dimensions = tuple((int(lv.size.width), int(lv.size.height)) for lv in levels)
        self.level_downsamples = tuple(float(w0) / lv.size.width for lv in levels)
        mpp = levels[0].mpp  # um/px (wsidicom's SizeMm holds um here)
        self.properties = {"openslide.vendor": "dicom (wsidicom)", "openslide.mpp-x": str(float(mpp.width)),
                           "openslide.mpp-y": str(float(mpp.height))}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.0001]
        return max(ok) if ok else 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGBA (h, w, 4); outside the image is transparent; a frame that cannot be decoded raises OSError."""
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        x, y = int(location[0] // ds), int(location[1] // ds)
        w, h = int(size[0]), int(size[1])
        out = np.zeros((h, w, 4), dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 > x0 and y1 > y0:
            try:
                arr = np.asarray(self._wsi.read_region((x0, y0), self._levels[level].level, (x1 - x0, y1 - y0)))
            except Exception as exc:  # noqa: BLE001 - decoder errors of any kind
                raise OSError(f"wsidicom: {type(exc).__name__}: {exc}") from None
            out[y0 - y:y1 - y, x0 - x:x1 - x, :3] = arr[..., :3]
            out[y0 - y:y1 - y, x0 - x:x1 - x, 3] = 255
        return out

    def close(self) -> None:
        self._wsi.close()
