"""HTML of the report: the index page and one page per slide (Jinja2 templates in ``report-files/templates/``).

Pages get everything they show as template values; a slide page's numbers (patch grid, scores,
tissue outline, the inline DZI tile source) go to ``slides/<slide>/data.js`` as one
``window.GHANET_SLIDE = {...}`` assignment, loaded with ``<script src>`` because browsers refuse
``fetch``/XHR of ``file://`` URLs. Every link is relative, so the folder works from disk and behind
any static web server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .. import __version__

#: colour map of the score layers (as the PNG heatmaps: perceptually uniform, readable in grey)
CMAP = "inferno"
#: cells outside a family's top-k mask (the PNG heatmaps' light blue), and its alpha (0-255)
MASKED_RGB = (140, 191, 242)
MASKED_ALPHA = 115
#: patch-grid layer colour and tissue outline colour
GRID_RGB = (64, 160, 255)
TISSUE_CSS = "#00c853"


def url(*parts: str) -> str:
    """A relative URL from path parts (each part percent-encoded: ids may hold spaces, '#', '%')."""
    return "/".join(quote(p, safe="") for p in parts)


@lru_cache(maxsize=1)
def colormap() -> list[list[int]]:
    """256 RGB entries of :data:`CMAP` (0-255)."""
    import matplotlib

    cmap = matplotlib.colormaps[CMAP]
    return [[int(round(255 * c)) for c in cmap(i / 255.0)[:3]] for i in range(256)]


def gradient_css() -> str:
    """A CSS linear gradient drawing :func:`colormap` left (0) to right (top of the scale)."""
    lut = colormap()
    stops = [f"rgb({lut[k][0]},{lut[k][1]},{lut[k][2]}) {k / 255 * 100:.1f}%" for k in range(0, 256, 17)]
    return "linear-gradient(to right, " + ", ".join(stops) + ")"


def _num(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def _p(value: Any) -> str:
    if value is None:
        return "n/a"
    v = float(value)
    return f"{v:.2e}" if v < 1e-3 else f"{v:.3f}"


@lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "report-files" / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["p"] = _p
    return env


def render(template: str, **values: Any) -> str:
    """Render ``templates/<template>`` with ``values`` (plus ``version``)."""
    return _env().get_template(template).render(version=__version__, **values)


def slide_data_js(data: Mapping[str, Any]) -> str:
    """The slide page's data file: one assignment of JSON (ASCII only, no NaN)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return f"window.GHANET_SLIDE = {text};\n"


def layer_controls(layers: Sequence[Mapping[str, Any]], has_tissue: bool) -> list[dict[str, Any]]:
    """The layer panel rows of a slide page: tissue outline, patch grid, then each score layer (the
    morphology attention shown by default at 50 % opacity)."""
    rows: list[dict[str, Any]] = []
    if has_tissue:
        rows.append({"key": "tissue", "name": "tissue outline", "unit": "tissue found by segment (level-0 outline)",
                     "checked": True, "opacity": 90, "gradient": None, "swatch": TISSUE_CSS, "masked": False})
    rows.append({"key": "grid", "name": "patch grid", "unit": "patches the model saw",
                 "checked": not layers, "opacity": 35, "gradient": None,
                 "swatch": "rgb({},{},{})".format(*GRID_RGB), "masked": False})
    grad = gradient_css()
    for lay in layers:
        rows.append({"key": lay["key"], "name": lay["name"], "unit": lay["unit"], "vmax": lay["vmax"],
                     "checked": lay["key"] == "attention", "opacity": 50, "gradient": grad, "swatch": None,
                     "masked": lay["masked"]})
    return rows


def masked_css() -> str:
    return "rgba({},{},{},{:.2f})".format(*MASKED_RGB, MASKED_ALPHA / 255)
