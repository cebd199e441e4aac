"""The segment stage for one slide: tissue polygons, the patch grid and a QC image.

Writes under ``<out>/segment/`` (layout: docs/architecture.md):

* ``<slide_id>.geojson``   tissue polygons with holes, level-0 px, QuPath-openable annotations
* ``<slide_id>.png``       QC: thumbnail, tissue contours (green, holes blue), kept patches (tinted grid)
* ``<slide_id>.coords.h5`` dataset ``coords`` (N, 2) int64 level-0 top-left (x, y) + ``tissue_fraction``
  (N,) float32, geometry and segmentation attrs, ``complete=True`` written last

The coords file is written last, so a valid coords file means the slide is finished. Every file is
written atomically. An existing finished slide is skipped when it was made with the same parameters
from the same file; different parameters without ``overwrite`` raise :class:`MismatchError`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.attrs import plain, same_setting
from ..core.errors import InputError, MismatchError
from ..core.files import atomic_path, remove_stale_temps, write_text_atomic
from ..core.ids import safe_child, sanitize_id
from ..core.runs import ItemResult, run_items, write_run_log
from .inputs import SlideSpec
from .tiling import DEFAULT_MIN_TISSUE, Grid, patch_grid
from .tissue import TissueMask, TissueParams, detect_tissue

log = logging.getLogger(__name__)

COORDS_SCHEMA_VERSION = 1
_CHUNK_ROWS = 1024
#: attrs every coords file must carry (besides ``complete``)
REQUIRED_ATTRS = ("schema_version", "slide_id", "target_mpp", "patch_size", "patch_size_level0", "level0_mpp",
                  "mpp_source", "source_name", "source_bytes", "ghanet_version")


@dataclass(frozen=True)
class SegmentParams:
    """Settings of the segment stage.

    ``target_mpp`` (um/px) and ``patch_size`` (px at target_mpp) define the patch; ``min_tissue`` is the
    minimum tissue fraction of a kept patch; ``thumbnail_downsample`` is relative to the *target*
    resolution (32 -> the tissue mask is computed at 16 um/px whatever the scan magnification);
    ``sat_threshold``, ``median_um``, ``close_um`` and the minimum areas (um^2) are passed to
    :mod:`ghanet_pipeline.wsi.tissue`. ``qc_max_side`` caps the QC image's longer side (px).
    """

    target_mpp: float = 0.5
    patch_size: int = 256
    sat_threshold: int = 15
    min_tissue: float = DEFAULT_MIN_TISSUE
    thumbnail_downsample: float = 32.0
    median_um: float = 112.0
    close_um: float = 64.0
    min_tissue_area_um2: float = 50_000.0
    min_hole_area_um2: float = 16_384.0
    qc_max_side: int = 1200

    def tissue_params(self) -> TissueParams:
        return TissueParams(sat_threshold=self.sat_threshold, median_um=self.median_um, close_um=self.close_um,
                            min_tissue_area_um2=self.min_tissue_area_um2, min_hole_area_um2=self.min_hole_area_um2)

    def result_params(self) -> dict[str, Any]:
        """The parameters that change the outputs (stored in the coords attrs and compared on rerun)."""
        d = asdict(self)
        d.pop("qc_max_side")
        return d


def segment_paths(out: Path | str, slide_id: str) -> dict[str, Path]:
    """``{"geojson", "png", "coords"}`` output paths of one slide under ``<out>/segment/``."""
    return {
        "geojson": safe_child(out, "segment", f"{slide_id}.geojson"),
        "png": safe_child(out, "segment", f"{slide_id}.png"),
        "coords": safe_child(out, "segment", f"{slide_id}.coords.h5"),
    }


# -- coords file ----------------------------------------------------------------------------------------
def load_coords(path: Path | str) -> tuple[np.ndarray, dict[str, Any]]:
    """Read and validate a coords file: ``(coords (N, 2) int64 level-0 (x, y), attrs)``.

    Raises :class:`InputError` naming the file when it is missing, unreadable, incomplete (a killed run)
    or lacks the datasets/attrs of the contract.
    """
    import h5py

    path = Path(path)
    fix = "rerun `ghanet segment` for this slide (with --overwrite)"
    if not path.is_file():
        raise InputError(f"coords file {path} does not exist; run `ghanet segment` first")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: plain(v) for k, v in f.attrs.items()}
            if "coords" not in f:
                raise InputError(f"coords file {path} has no 'coords' dataset; {fix}")
            ds = f["coords"]
            if ds.ndim != 2 or ds.shape[1] != 2 or ds.dtype.kind not in "iu":
                raise InputError(f"coords file {path}: 'coords' must be (N, 2) integers, found {ds.shape} "
                                 f"{ds.dtype}; {fix}")
            coords = ds[()].astype(np.int64, copy=False)
    except OSError as exc:
        raise InputError(f"coords file {path} cannot be read as HDF5 ({exc}); {fix}") from None
    if attrs.get("complete") is not True:
        raise InputError(f"coords file {path} is incomplete (written by an interrupted run); {fix}")
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise InputError(f"coords file {path} lacks attribute(s) {', '.join(missing)}; {fix}")
    if int(attrs["schema_version"]) != COORDS_SCHEMA_VERSION:
        raise InputError(f"coords file {path} has schema_version {attrs['schema_version']}, this ghanet reads "
                         f"{COORDS_SCHEMA_VERSION}; {fix}")
    return coords.reshape(-1, 2), attrs


def _write_coords(path: Path, grid: Grid, attrs: dict[str, Any]) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=grid.coords.astype(np.int64), maxshape=(None, 2),
                             chunks=(_CHUNK_ROWS, 2))
            f.create_dataset("tissue_fraction", data=grid.tissue_fraction.astype(np.float32), maxshape=(None,),
                             chunks=(_CHUNK_ROWS,))
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["complete"] = True  # last: marks the file as finished


# -- GeoJSON and QC -------------------------------------------------------------------------------------
def tissue_geojson(tissue: TissueMask, thumb_ds: float, slide_id: str, level0_mpp: float) -> dict[str, Any]:
    """FeatureCollection of tissue Polygons (outer ring + holes) in level-0 px, as QuPath annotations."""
    features = []
    for i, poly in enumerate(tissue.polygons):
        p0 = poly.scaled(thumb_ds)
        rings = []
        for ring in [p0.outer, *p0.holes]:
            if len(ring) < 3:
                continue
            pts = np.round(ring, 1).tolist()
            rings.append(pts + [pts[0]])
        if not rings or len(poly.outer) < 3:
            continue
        features.append({
            "type": "Feature",
            # QuPath reads "id" as a UUID: a deterministic one per slide and piece
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"ghanet:{slide_id}:tissue:{i}")),
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {
                "objectType": "annotation",
                "name": f"tissue {i}",
                "classification": {"name": "Tissue", "color": [0, 160, 0]},
                "isLocked": False,
                "area_um2": round(poly.area_um2, 1),
                "holes": len(rings) - 1,
            },
        })
    return {"type": "FeatureCollection", "features": features,
            "ghanet": {"slide_id": slide_id, "units": "level-0 pixels", "level0_mpp": level0_mpp,
                       "ghanet_version": __version__}}


def qc_image(thumb: np.ndarray, qc_ds: float, tissue: TissueMask, thumb_ds: float, grid: Grid,
             title: str) -> np.ndarray:
    """RGB QC image: ``thumb`` (at ``qc_ds`` level-0 px per px) with kept patches tinted and outlined,
    tissue outlines green and holes blue, a title line on top."""
    import cv2

    img = thumb.astype(np.float32)
    h, w = img.shape[:2]
    step = grid.step_level0
    kept = np.zeros((max(grid.n_rows, 1), max(grid.n_cols, 1)), dtype=bool)
    if len(grid.coords):
        kept[grid.coords[:, 1] // step, grid.coords[:, 0] // step] = True
    cx = np.floor((np.arange(w) + 0.5) * qc_ds / step).astype(np.int64)
    cy = np.floor((np.arange(h) + 0.5) * qc_ds / step).astype(np.int64)
    inx, iny = cx < grid.n_cols, cy < grid.n_rows
    cell = kept[np.clip(cy, 0, kept.shape[0] - 1)[:, None], np.clip(cx, 0, kept.shape[1] - 1)[None, :]]
    cell &= iny[:, None] & inx[None, :]
    tint = np.array([40.0, 90.0, 230.0], dtype=np.float32)
    img[cell] = img[cell] * 0.75 + tint * 0.25
    if step / qc_ds >= 4:  # grid lines where a cell starts, on kept cells
        bx = np.r_[True, cx[1:] != cx[:-1]]
        by = np.r_[True, cy[1:] != cy[:-1]]
        lines = cell & (bx[None, :] | by[:, None])
        img[lines] = img[lines] * 0.4 + tint * 0.6
    out = np.clip(img, 0, 255).astype(np.uint8)
    scale = thumb_ds / qc_ds
    thick = max(1, int(round(max(h, w) / 700)))
    for poly in tissue.polygons:
        outer = np.round((poly.outer + 0.5) * scale - 0.5).astype(np.int32)
        cv2.polylines(out, [outer], True, (0, 170, 0), thick, lineType=cv2.LINE_AA)
        holes = [np.round((hh + 0.5) * scale - 0.5).astype(np.int32) for hh in poly.holes]
        if holes:
            cv2.polylines(out, holes, True, (0, 60, 220), thick, lineType=cv2.LINE_AA)
    # title lines (split at double spaces), each scaled to fit the width
    lines = [t for t in title.split("  ") if t]
    line_h = max(16, int(round(max(h, w) / 60)))
    bar = np.full((line_h * len(lines) + 4, w, 3), 255, dtype=np.uint8)
    for k, text in enumerate(lines):
        scale = line_h / 34
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        scale *= min(1.0, (w - 8) / max(tw, 1))
        cv2.putText(bar, text, (4, line_h * (k + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    max(1, line_h // 24), cv2.LINE_AA)
    return np.concatenate([bar, out], axis=0)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError(f"could not encode the QC image {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


# -- the stage ------------------------------------------------------------------------------------------
def _existing(paths: dict[str, Path]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The finished coords file (when it and the GeoJSON/PNG exist and validate), else None."""
    if not all(p.is_file() for p in paths.values()):
        return None
    try:
        coords, attrs = load_coords(paths["coords"])
    except InputError:
        return None
    return coords, attrs


def _mismatches(attrs: dict[str, Any], spec: SlideSpec, params: SegmentParams) -> list[str]:
    out = []
    want = params.result_params()
    for k, v in want.items():
        have = attrs.get(k)
        if have is None or not same_setting(have, v):
            out.append(f"{k}={have} (now {v})")
    src = Path(spec.path)
    if attrs.get("source_name") != src.name:
        out.append(f"source_name={attrs.get('source_name')} (now {src.name})")
    elif src.is_file() and int(attrs.get("source_bytes", -1)) != src.stat().st_size:
        out.append(f"source_bytes={attrs.get('source_bytes')} (now {src.stat().st_size}: the slide file changed)")
    if spec.mpp is not None and (attrs.get("mpp_source") != "override"
                                 or not same_setting(attrs.get("level0_mpp"), spec.mpp)):
        out.append(f"level0_mpp={attrs.get('level0_mpp')} from {attrs.get('mpp_source')} (now override {spec.mpp})")
    if spec.mpp is None and attrs.get("mpp_source") == "override":
        out.append(f"level0_mpp={attrs.get('level0_mpp')} from an override (now none given)")
    return out


def segment_slide(spec: SlideSpec, out: Path | str, params: SegmentParams = SegmentParams(),
                  overwrite: bool = False) -> ItemResult:
    """Segment one slide into ``<out>/segment/``; return its :class:`ItemResult`.

    Status ``done`` (patches found), ``no tissue`` (outputs written, zero patches; ``message`` says
    why), ``skipped`` (finished outputs with the same parameters exist). Raises :class:`SlideError`
    for unreadable slides and :class:`MismatchError` when existing outputs were made differently and
    ``overwrite`` is false.
    """
    from .slide import Slide

    t0 = time.perf_counter()
    sid = spec.slide_id
    try:
        safe = sanitize_id(sid, "slide_id")
    except InputError:
        safe = ""
    if safe != sid:
        raise InputError(f"slide_id {sid!r} is not a safe file name (it could write outside {out}); use "
                         f"inputs.collect_slides / read_manifest, which sanitise ids, or rename it")
    paths = segment_paths(out, sid)
    if not overwrite:
        found = _existing(paths)
        if found is not None:
            coords, attrs = found
            bad = _mismatches(attrs, spec, params)
            if bad:
                raise MismatchError(f"slide {sid!r}: {paths['coords']} was made with other settings: "
                                    f"{'; '.join(bad)}. Pass --overwrite to redo it, or use another --out")
            return ItemResult(item=sid, status="skipped", seconds=round(time.perf_counter() - t0, 3),
                              metrics=_metrics(attrs, len(coords)))

    remove_stale_temps(paths["coords"].parent, [p.name for p in paths.values()])  # this slide's leftovers only
    with Slide(spec.path, mpp=spec.mpp, slide_id=sid) as slide:
        plan = slide.plan(params.target_mpp, params.patch_size)
        thumb_ds_req = max(1.0, params.thumbnail_downsample * params.target_mpp / slide.mpp)
        thumb, thumb_ds = slide.thumbnail(thumb_ds_req)
        thumb_mpp = thumb_ds * slide.mpp
        tissue = detect_tissue(thumb, thumb_mpp, params.tissue_params())
        grid = patch_grid(tissue.mask, thumb_ds, slide.dimensions, plan.patch_size_level0, params.min_tissue)
        w0, h0 = slide.dimensions
        qc_ds = max(1.0, max(w0, h0) / params.qc_max_side)
        if qc_ds >= thumb_ds:
            qc_thumb, qc_ds = thumb, thumb_ds
        else:
            qc_thumb, qc_ds = slide.thumbnail(qc_ds)
        mpp, mpp_source = slide.mpp, slide.mpp_source
        level_count = slide.level_count

    tissue_mm2 = tissue.area_um2 / 1e6
    n = len(grid.coords)
    message = ""
    if n == 0:
        side_um = params.patch_size * params.target_mpp
        if grid.n_cols == 0 or grid.n_rows == 0:
            message = (f"slide is {w0}x{h0} px ({w0 * mpp:.0f}x{h0 * mpp:.0f} um), smaller than one "
                       f"{side_um:g} um patch")
        elif not tissue.polygons:
            message = (f"no tissue found (saturation > {params.sat_threshold}, pieces >= "
                       f"{params.min_tissue_area_um2:g} um^2); see the QC image, or lower --sat-threshold "
                       f"or --min-tissue-area")
        else:
            message = (f"{tissue_mm2:.3g} mm^2 of tissue but no patch is >= {params.min_tissue:g} tissue; "
                       f"lower --min-tissue")
        log.warning("slide %s: 0 patches: %s", sid, message)

    attrs: dict[str, Any] = {
        "schema_version": COORDS_SCHEMA_VERSION,
        "slide_id": sid,
        "target_mpp": float(params.target_mpp),
        "patch_size": int(params.patch_size),
        "patch_size_level0": int(plan.patch_size_level0),
        "read_level": int(plan.level),
        "read_size": int(plan.read_size),
        "level0_mpp": float(mpp),
        "mpp_source": mpp_source,
        "level0_width": int(w0),
        "level0_height": int(h0),
        "level_count": int(level_count),
        "source_name": Path(spec.path).name,
        "source_bytes": int(Path(spec.path).stat().st_size),
        "ghanet_version": __version__,
        "thumbnail_level0_downsample": float(thumb_ds),
        "tissue_mm2": float(tissue_mm2),
        "n_patches": int(n),
        **{k: v for k, v in params.result_params().items() if k not in ("target_mpp", "patch_size")},
    }
    geo = tissue_geojson(tissue, thumb_ds, sid, mpp)
    write_text_atomic(paths["geojson"], json.dumps(geo, separators=(",", ":")) + "\n")
    title = (f"{sid}  {mpp:.4g} um/px ({mpp_source}), tissue {tissue_mm2:.3g} mm2  "
             f"{n} patches of {params.patch_size} px at {params.target_mpp:g} um/px (min tissue {params.min_tissue:g})")
    _write_png(paths["png"], qc_image(qc_thumb, qc_ds, tissue, thumb_ds, grid, title))
    _write_coords(paths["coords"], grid, attrs)
    return ItemResult(item=sid, status="done" if n else "no tissue", seconds=round(time.perf_counter() - t0, 3),
                      message=message, metrics=_metrics(attrs, n))


def segment_slides(specs: Sequence[SlideSpec], out: Path | str, params: SegmentParams = SegmentParams(),
                   overwrite: bool = False, on_done: Callable[[ItemResult], None] | None = None,
                   log_config: Mapping[str, Any] | None = None) -> list[ItemResult]:
    """Segment every slide (a failing slide is recorded, the others go on) and write the stage's run log
    (``<out>/logs/segment-*.json``: settings, ``log_config`` extras such as the shard, per-slide status)."""
    started = time.time()
    results = run_items(specs, lambda s: s.slide_id, lambda s: segment_slide(s, out, params, overwrite), on_done=on_done)
    config = {"slides": [str(s.path) for s in specs], "out": str(out), "overwrite": overwrite,
              **params.result_params(), **(log_config or {})}
    write_run_log(out, "segment", config, results, started)
    return results


def _metrics(attrs: dict[str, Any], n: int) -> dict[str, Any]:
    return {"mpp": round(float(attrs["level0_mpp"]), 4), "mpp_source": attrs["mpp_source"],
            "tissue_mm2": round(float(attrs.get("tissue_mm2", 0.0)), 3), "patches": int(n),
            "patch_size_level0": int(attrs["patch_size_level0"])}
