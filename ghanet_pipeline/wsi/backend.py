"""The slide readers behind :class:`~.slide.Slide`: OpenSlide, or wsidicom for DICOM WSI series OpenSlide
cannot decode. Both give what :class:`SlideBackend` names, in level-0 pixel coordinates."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..core.errors import SlideError
from . import dicom

log = logging.getLogger(__name__)


class SlideBackend(Protocol):
    """A whole-slide reader: pyramid geometry (level-0 px), metadata properties and RGBA regions.

    ``openslide.OpenSlide`` is one as it is; :class:`~.dicom.WsiDicomReader` is the other."""

    properties: Mapping[str, str]
    dimensions: tuple[int, int]
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def get_best_level_for_downsample(self, downsample: float) -> int: ...

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Any:
        """RGBA (h, w, 4) of ``size`` px at ``level``, top-left at level-0 ``location``; OSError when unreadable."""

    def close(self) -> None: ...


def open_backend(path: Path, name: str) -> tuple[SlideBackend, str]:
    """(reader, its name ``openslide`` | ``wsidicom``) for a slide file or DICOM WSI folder; ``name`` is
    how errors call the slide. Raises :class:`SlideError` in plain words when neither can read it."""
    import openslide  # (heavy native library: import on use)

    is_dicom = dicom.is_dicom_folder(path) or dicom.is_dicom_file(path)
    # DICOM WSI: OpenSlide opens the level-0 VOLUME instance and finds the series in its folder
    target = dicom.volume_instance(path, name) if is_dicom else path
    try:
        return openslide.OpenSlide(str(target)), "openslide"
    except (openslide.OpenSlideError, OSError) as exc:
        if is_dicom:
            return _open_wsidicom(target, exc, name), "wsidicom"
        if isinstance(exc, openslide.OpenSlideUnsupportedFormatError):
            raise SlideError(f"{name}: not a slide format OpenSlide can read (is it a whole-slide image? "
                             f"supported: .svs, .tif, .ndpi, .mrxs, .scn, .vms, .bif, DICOM WSI ...)") from None
        raise SlideError(f"{name}: cannot be opened, the file looks damaged or truncated ({exc}); "
                         f"re-copy or re-export it") from None


def _open_wsidicom(target: Path, exc: Exception, name: str) -> SlideBackend:
    """A DICOM WSI series OpenSlide cannot read (e.g. RLE or JPEG-LS frames): read it with wsidicom."""
    try:
        reader = dicom.WsiDicomReader(target.parent)
    except Exception as exc2:  # noqa: BLE001 - any wsidicom failure is reported with OpenSlide's
        unsupported = "unsupported" in str(exc).lower() or "not supported" in str(exc2).lower()
        what = ("not a format we read" if unsupported else "the DICOM files look damaged or truncated; re-copy "
                "or re-export them")
        raise SlideError(f"{name}: {what} (OpenSlide: {exc}; wsidicom: {type(exc2).__name__}: {exc2})"
                         + (f"; {dicom.CONVERT_HINT}" if unsupported else "")) from None
    log.info("%s: read with wsidicom (OpenSlide: %s)", name, exc)
    return reader
