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
from .qc import qc_image, tissue_geojson, write_png
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


@dataclass
class SlideScan:
    """What segmenting one slide found: the read plan, the thumbnail tissue mask and the patch grid (level-0
    coordinates), the QC thumbnail and the slide's geometry (level-0 px, um/px)."""

    plan: Any
    thumb_ds: float
    tissue: TissueMask
    grid: Grid
    qc_thumb: np.ndarray
    qc_ds: float
    dimensions: tuple[int, int]
    mpp: float
    mpp_source: str
    level_count: int


def scan_slide(spec: SlideSpec, params: SegmentParams) -> SlideScan:
    """Read the slide's thumbnail, find tissue and lay the patch grid (no file written)."""
    from .slide import Slide

    with Slide(spec.path, mpp=spec.mpp, slide_id=spec.slide_id) as slide:
        plan = slide.plan(params.target_mpp, params.patch_size)
        thumb, thumb_ds = slide.thumbnail(max(1.0, params.thumbnail_downsample * params.target_mpp / slide.mpp))
        tissue = detect_tissue(thumb, thumb_ds * slide.mpp, params.tissue_params())
        grid = patch_grid(tissue.mask, thumb_ds, slide.dimensions, plan.patch_size_level0, params.min_tissue)
        qc_ds = max(1.0, max(slide.dimensions) / params.qc_max_side)
        if qc_ds >= thumb_ds:
            qc_thumb, qc_ds = thumb, thumb_ds
        else:
            qc_thumb, qc_ds = slide.thumbnail(qc_ds)
        return SlideScan(plan, thumb_ds, tissue, grid, qc_thumb, qc_ds, tuple(slide.dimensions), slide.mpp,
                         slide.mpp_source, slide.level_count)


def _no_patch_message(scan: SlideScan, params: SegmentParams) -> str:
    """Why a slide has no patch, and which option to change."""
    w0, h0 = scan.dimensions
    if scan.grid.n_cols == 0 or scan.grid.n_rows == 0:
        return (f"slide is {w0}x{h0} px ({w0 * scan.mpp:.0f}x{h0 * scan.mpp:.0f} um), smaller than one "
                f"{params.patch_size * params.target_mpp:g} um patch")
    if not scan.tissue.polygons:
        return (f"no tissue found (saturation > {params.sat_threshold}, pieces >= "
                f"{params.min_tissue_area_um2:g} um^2); see the QC image, or lower --sat-threshold "
                f"or --min-tissue-area")
    return (f"{scan.tissue.area_um2 / 1e6:.3g} mm^2 of tissue but no patch is >= {params.min_tissue:g} tissue; "
            f"lower --min-tissue")


def _coords_attrs(spec: SlideSpec, scan: SlideScan, params: SegmentParams) -> dict[str, Any]:
    """The coords file's attrs (docs/architecture.md, "Coords files")."""
    return {
        "schema_version": COORDS_SCHEMA_VERSION,
        "slide_id": spec.slide_id,
        "target_mpp": float(params.target_mpp),
        "patch_size": int(params.patch_size),
        "patch_size_level0": int(scan.plan.patch_size_level0),
        "read_level": int(scan.plan.level),
        "read_size": int(scan.plan.read_size),
        "level0_mpp": float(scan.mpp),
        "mpp_source": scan.mpp_source,
        "level0_width": int(scan.dimensions[0]),
        "level0_height": int(scan.dimensions[1]),
        "level_count": int(scan.level_count),
        "source_name": Path(spec.path).name,
        "source_bytes": int(Path(spec.path).stat().st_size),
        "ghanet_version": __version__,
        "thumbnail_level0_downsample": float(scan.thumb_ds),
        "tissue_mm2": float(scan.tissue.area_um2 / 1e6),
        "n_patches": int(len(scan.grid.coords)),
        **{k: v for k, v in params.result_params().items() if k not in ("target_mpp", "patch_size")},
    }


def _check_safe_id(sid: str, out: Path | str) -> None:
    try:
        safe = sanitize_id(sid, "slide_id")
    except InputError:
        safe = ""
    if safe != sid:
        raise InputError(f"slide_id {sid!r} is not a safe file name (it could write outside {out}); use "
                         f"inputs.collect_slides / read_manifest, which sanitise ids, or rename it")


def segment_slide(spec: SlideSpec, out: Path | str, params: SegmentParams = SegmentParams(),
                  overwrite: bool = False) -> ItemResult:
    """Segment one slide into ``<out>/segment/``; return its :class:`ItemResult`.

    Status ``done`` (patches found), ``no tissue`` (outputs written, zero patches; ``message`` says
    why), ``skipped`` (finished outputs with the same parameters exist). Raises :class:`SlideError`
    for unreadable slides and :class:`MismatchError` when existing outputs were made differently and
    ``overwrite`` is false.
    """
    t0 = time.perf_counter()
    sid = spec.slide_id
    _check_safe_id(sid, out)
    paths = segment_paths(out, sid)
    found = None if overwrite else _existing(paths)
    if found is not None:
        coords, old = found
        bad = _mismatches(old, spec, params)
        if bad:
            raise MismatchError(f"slide {sid!r}: {paths['coords']} was made with other settings: "
                                f"{'; '.join(bad)}. Pass --overwrite to redo it, or use another --out")
        return ItemResult(item=sid, status="skipped", seconds=round(time.perf_counter() - t0, 3),
                          metrics=_metrics(old, len(coords)))

    remove_stale_temps(paths["coords"].parent, [p.name for p in paths.values()])  # this slide's leftovers only
    scan = scan_slide(spec, params)
    attrs = _coords_attrs(spec, scan, params)
    n = attrs["n_patches"]
    message = "" if n else _no_patch_message(scan, params)
    if message:
        log.warning("slide %s: 0 patches: %s", sid, message)
    geo = tissue_geojson(scan.tissue, scan.thumb_ds, sid, scan.mpp)
    write_text_atomic(paths["geojson"], json.dumps(geo, separators=(",", ":")) + "\n")
    title = (f"{sid}  {scan.mpp:.4g} um/px ({scan.mpp_source}), tissue {attrs['tissue_mm2']:.3g} mm2  "
             f"{n} patches of {params.patch_size} px at {params.target_mpp:g} um/px (min tissue {params.min_tissue:g})")
    write_png(paths["png"], qc_image(scan.qc_thumb, scan.qc_ds, scan.tissue, scan.thumb_ds, scan.grid, title))
    _write_coords(paths["coords"], scan.grid, attrs)
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
