"""The patch grid a bag is made on: segment's coords file for a slide (segmenting it first, with the
default settings, when the file is missing), checked against the slide file it was made from, and the
segmentation settings as a bag records them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import SlideError
from ..core.fingerprints import check_same, component_from_mapping
from ..wsi.inputs import SlideSpec
from ..wsi.segment import SegmentParams, load_coords, segment_paths, segment_slide

log = logging.getLogger(__name__)


def slide_coords(spec: SlideSpec, out: Path) -> tuple[np.ndarray, dict[str, Any], bool]:
    """The slide's coords from ``<out>/segment``; runs segmentation (defaults) when the file is missing.

    Raises :class:`MismatchError` when the coords file was made from another slide file (other name
    or size, e.g. a slide replaced after segmenting, or a same-named slide of another folder).
    """
    path = segment_paths(out, spec.slide_id)["coords"]
    segmented = False
    if not path.exists():
        log.info("slide %s: no patch coords at %s; running 'ghanet segment' with default settings first",
                 spec.slide_id, path)
        res = segment_slide(spec, out, SegmentParams())
        if not res.ok:
            raise SlideError(f"slide {spec.slide_id!r}: segmentation (run because {path} was missing) failed: "
                             f"{res.message}")
        segmented = True
    coords, attrs = load_coords(path)  # (N, 2) int64 and plain python attrs
    src = Path(spec.path)
    size = src.stat().st_size if src.is_file() else None
    recorded = {"name": attrs.get("source_name"), "bytes": int(attrs.get("source_bytes", -1))}
    now = {"name": src.name, "bytes": recorded["bytes"] if size is None else size}
    check_same({"slide file": component_from_mapping(recorded)}, {"slide file": component_from_mapping(now)},
               what=f"slide {spec.slide_id!r}: its patch coords {path}",
               fix=f"The slide given now is {src}: rerun 'ghanet segment --overwrite' for this slide, or use "
                   f"another --out.")
    return coords, attrs, segmented


def segment_params_json(coords_attrs: dict[str, Any]) -> str:
    """The segmentation settings in a coords file's attrs (plain values, as from ``load_coords``), as
    JSON (stored in the bag so that a model trained on these bags can segment new slides the same way
    at prediction time)."""
    keys = SegmentParams().result_params()
    return json.dumps({k: coords_attrs[k] for k in keys if k in coords_attrs}, sort_keys=True)
