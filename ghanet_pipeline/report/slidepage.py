"""One report page per predicted slide: pyramid, overlay data, top-patch gallery, HTML.

Files of slide ``s`` (an id made safe as a file name by ``predict``):

    pyramids/<s>/          the deep-zoom pyramid (``pyramid.py``; reused when unchanged)
    slides/<s>.html        the page
    slides/<s>/data.js     window.GHANET_SLIDE: slide facts, the inline DZI tile source, grid, layers
    slides/<s>/top/*.jpeg  gallery images of the top patches per layer

A slide whose file cannot be found or read gets no page; the index says why, and the other slides go on.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import GhanetError, InputError, SlideError
from ..core.files import write_text_atomic
from . import pages
from .gather import SlideSource
from .layers import SlideScores, page_data
from .pyramid import Pyramid, PyramidSettings, build_pyramid, replace_dir, temp_dir

#: side in px of a gallery image
TOP_PX = 150


@dataclass
class SlidePage:
    """What happened to one slide's page. ``status``: ``done``, ``failed`` (``message`` says why) or ``no
    slide file`` (predicted from a bag alone: no page, not an error)."""

    slide_id: str
    case_id: str
    status: str
    message: str = ""
    href: str | None = None
    pyramid: Pyramid | None = None
    n_patches: int = 0
    seconds: float = 0.0


def _level0_mpp(src: SlideSource) -> float | None:
    """The level-0 um/px the patch grid was made with (coords file of segment), else the caller's."""
    if src.mpp is not None:
        return src.mpp
    if src.coords is not None:
        from ..wsi.segment import load_coords

        try:
            return float(load_coords(src.coords)[1]["level0_mpp"])
        except (InputError, KeyError, TypeError, ValueError):
            return None
    return None


def _read_top(slide: Any, x: int, y: int, side0: int) -> np.ndarray:
    """A patch (level-0 top-left ``x, y``, side ``side0``) as a ``TOP_PX`` square RGB image."""
    import cv2

    ds = side0 / TOP_PX
    level = max([i for i, d in enumerate(slide.level_downsamples) if d <= ds * 1.0001] or [0],
                key=lambda i: slide.level_downsamples[i])
    side = max(1, int(round(side0 / slide.level_downsamples[level])))
    rgb = slide.read_region(x, y, level, (side, side))
    return cv2.resize(rgb, (TOP_PX, TOP_PX), interpolation=cv2.INTER_AREA)


def write_gallery(top_dir: Path, slide_path: Path, mpp: float | None, data: Mapping[str, Any],
                  size0: int) -> list[dict[str, Any]]:
    """Write the top patches of every layer as JPEGs into ``top_dir`` (replaced as a whole) and return
    the gallery rows of the page (relative image URLs start with ``<slide>/top/``)."""
    import cv2

    from ..wsi.slide import Slide

    tmp = temp_dir(top_dir)
    gallery = []
    try:
        with Slide(slide_path, mpp=mpp) as slide:
            for layer in data["layers"]:
                items = []
                for rank, i in enumerate(layer["top"], start=1):
                    x, y = data["patches"]["x"][i], data["patches"]["y"][i]
                    name = f"{layer['key']}_{rank}.jpeg"
                    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(_read_top(slide, x, y, size0)[..., ::-1]),
                                           [cv2.IMWRITE_JPEG_QUALITY, 85])
                    if not ok:
                        raise OSError(f"cannot encode {name} as JPEG")
                    (tmp / name).write_bytes(buf.tobytes())
                    items.append({"index": i, "x": x, "y": y, "value": layer["values"][i],
                                  "src": pages.url(top_dir.parent.name, "top", name)})
                if items:
                    gallery.append({"name": layer["name"], "unit": layer["unit"], "items": items})
        replace_dir(tmp, top_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return gallery


def _case_header(case: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """The case's risk summary and its predicted survival curve (S at the end of each time bin)."""
    keys = ("case_id", "risk", "risk_std", "risk_group", "folds_high", "n_folds")
    head = {k: case.get(k) for k in keys}
    edges, surv = case.get("bin_edges_months") or [], case.get("survival") or []
    curve = [{"months": float(e), "S": float(s)} for e, s in zip(edges[1:], surv, strict=False)]
    return head, curve


def slide_page(report: Path, src: SlideSource, scores: SlideScores, case: Mapping[str, Any],
               settings: PyramidSettings, workers: int = 1, topk: str = "k %") -> SlidePage:
    """Build the page of one slide (see module docstring); raises on unreadable inputs."""
    t0 = time.perf_counter()
    page = SlidePage(slide_id=src.slide_id, case_id=src.case_id, status="done", n_patches=len(scores.coords))
    if src.path is None or not Path(src.path).exists():
        raise SlideError(f"slide {src.slide_id}: file {src.path} not found; if it moved, pass its new location "
                         f"with `ghanet report --manifest` (slide_id,path)")
    mpp = _level0_mpp(src)
    sid = src.slide_id
    pyr = build_pyramid(Path(src.path), report / "pyramids" / sid, settings, mpp=mpp, workers=workers)
    page.pyramid = pyr
    data = page_data(scores)
    data.update({
        "slide": {"id": sid, "case_id": src.case_id, "width": pyr.width, "height": pyr.height,
                  "mpp": pyr.level0_mpp},
        "pyramid": {"tile_source": pyr.tile_source(pages.url("..", "pyramids", sid, "slide_files") + "/"),
                    "max_level": pyr.max_level, "downsample": pyr.downsample, "width": pyr.dzi_width,
                    "height": pyr.dzi_height, "finest_mpp": pyr.finest_mpp},
        "osd_images": "../assets/openseadragon/images/", "colormap": pages.colormap(),
        "masked_colour": list(pages.MASKED_RGB), "masked_alpha": pages.MASKED_ALPHA,
        "grid_colour": list(pages.GRID_RGB), "tissue_colour": pages.TISSUE_CSS})
    gallery = write_gallery(report / "slides" / sid / "top", Path(src.path), mpp, data, scores.size0)
    write_text_atomic(report / "slides" / sid / "data.js", pages.slide_data_js(data))
    head, curve = _case_header(case)
    facts = {"file": str(src.path), "width": pyr.width, "height": pyr.height, "mpp": pyr.level0_mpp,
             "finest_mpp": pyr.finest_mpp, "downsample": pyr.downsample, "n_tiles": pyr.n_tiles,
             "size": human_bytes(pyr.bytes), "reused": pyr.reused, "n_patches": len(scores.coords),
             "patch_px": scores.size0, "snapped": data["grid"]["snapped"]}
    html = pages.render("slide.html", assets="../assets/", slide_id=sid, case=head, survival=curve,
                        notes=scores.notes, layers=pages.layer_controls(data["layers"], bool(scores.tissue)),
                        masked_css=pages.masked_css(), topk=topk, gallery=gallery, facts=facts,
                        data_js=pages.url(sid, "data.js"))
    write_text_atomic(report / "slides" / f"{sid}.html", html)
    page.href = pages.url("slides", f"{sid}.html")
    page.seconds = round(time.perf_counter() - t0, 3)
    return page


def build_pages(report: Path, slides: Sequence[tuple[SlideSource, SlideScores | None, str]],
                cases: Mapping[str, Mapping[str, Any]], settings: PyramidSettings, workers: int = 1,
                topk: str = "k %", on_page: Any = None) -> list[SlidePage]:
    """Every slide's page; a slide that fails (``scores`` None: its error in the third item) is
    recorded and the others go on. ``on_page(page)`` is called after each."""
    out = []
    for src, scores, error in slides:
        t0 = time.perf_counter()
        try:
            if src.path is None:  # predicted from a bag alone (predict --features): nothing to show
                page = SlidePage(slide_id=src.slide_id, case_id=src.case_id, status="no slide file",
                                 message="the prediction record names no slide file (made from a bag, or by an "
                                         "older ghanet); `ghanet report --manifest` can say where the slide is")
            elif scores is None:
                raise InputError(error)
            else:
                page = slide_page(report, src, scores, cases.get(src.case_id, {}), settings, workers, topk)
        except (GhanetError, SlideError, OSError, ValueError) as exc:
            page = SlidePage(slide_id=src.slide_id, case_id=src.case_id, status="failed", message=str(exc),
                             seconds=round(time.perf_counter() - t0, 3))
        out.append(page)
        if on_page is not None:
            on_page(page)
    return out


def human_bytes(n: int) -> str:
    """``n`` bytes as B, kB, MB or GB (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
