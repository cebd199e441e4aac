"""``ghanet segment``: tissue polygons, the patch grid and a QC image per slide."""

from __future__ import annotations

from pathlib import Path

import click

from ..wsi.segment import SegmentParams
from .common import (
    Progress,
    default_of,
    finish,
    manifest_option,
    no_progress_option,
    out_option,
    overwrite_option,
    print_summary,
    shard_option,
    slides_argument,
)


@click.command("segment")
@slides_argument
@manifest_option
@out_option
@click.option("--target-mpp", type=click.FloatRange(min=0, min_open=True), default=default_of(SegmentParams, "target_mpp"),
              show_default=True,
              help="um/px of the patches (0.5 = 20x).")
@click.option("--patch-size", type=click.IntRange(min=8), default=default_of(SegmentParams, "patch_size"), show_default=True,
              help="Patch side in px at --target-mpp (the grid step; patches do not overlap).")
@click.option("--sat-threshold", type=click.IntRange(0, 255), default=default_of(SegmentParams, "sat_threshold"), show_default=True,
              help="Tissue = HSV saturation (0-255) above this, after a median blur.")
@click.option("--min-tissue", type=click.FloatRange(0, 1), default=default_of(SegmentParams, "min_tissue"), show_default=True,
              help="Keep a patch when at least this fraction of its area is tissue.")
@click.option("--thumbnail-downsample", type=click.FloatRange(min=1),
              default=default_of(SegmentParams, "thumbnail_downsample"), show_default=True,
              help="Tissue mask resolution, as a downsample of --target-mpp (32 -> 16 um/px).")
@click.option("--min-tissue-area", type=click.FloatRange(min=0), default=default_of(SegmentParams, "min_tissue_area_um2"),
              show_default=True, help="Drop tissue pieces smaller than this (um^2).")
@click.option("--min-hole-area", type=click.FloatRange(min=0), default=default_of(SegmentParams, "min_hole_area_um2"),
              show_default=True, help="Fill holes smaller than this (um^2).")
@overwrite_option
@no_progress_option
@shard_option
def segment(slides: tuple[str, ...], manifest: Path | None, recursive: bool, mpp: float | None,
            case_id_from: str | None, gdc_manifest: Path | None, slide_types: str | None,
            out: Path, target_mpp: float, patch_size: int, sat_threshold: int,
            min_tissue: float, thumbnail_downsample: float, min_tissue_area: float, min_hole_area: float,
            overwrite: bool, no_progress: bool, shard: str | None) -> None:
    """Find tissue and lay the non-overlapping patch grid (256 px at 0.5 um/px by default).

    SLIDES are slide files, DICOM WSI folders (one slide each, named after the folder), directories or
    glob patterns (or use --manifest). Writes
    <out>/segment/<slide_id>.geojson, .coords.h5 and .png, and a run log in <out>/logs/.
    """
    from ..wsi.gather import gather_slides
    from ..wsi.inputs import parse_shard
    from ..wsi.segment import segment_slides

    specs = gather_slides(slides, manifest, recursive, case_id_from, mpp, out=out, gdc_manifest=gdc_manifest,
                          slide_types=slide_types, shard=parse_shard(shard))
    params = SegmentParams(target_mpp=target_mpp, patch_size=patch_size, sat_threshold=sat_threshold,
                           min_tissue=min_tissue, thumbnail_downsample=thumbnail_downsample,
                           min_tissue_area_um2=min_tissue_area, min_hole_area_um2=min_hole_area)
    with Progress(len(specs), "segment", disable=no_progress) as progress:
        log_config = {"manifest": manifest, "mpp": mpp, "shard": shard, "gdc_manifest": gdc_manifest,
                      "slide_types": slide_types}
        results = segment_slides(specs, out, params, overwrite, log_config=log_config,
                                 on_done=lambda r: progress.advance(1, f"{r.item}: {r.status}"))
    for r in results:
        if "mpp" in r.metrics:
            r.metrics["um/px"] = f"{r.metrics['mpp']:.4g} ({r.metrics['mpp_source']})"
    print_summary("ghanet segment", results, [("um/px", "um/px (source)"), ("tissue_mm2", "tissue mm²"),
                                               ("patches", "patches")])
    click.echo(f"outputs: {Path(out) / 'segment'}   run log: {Path(out) / 'logs'}")
    finish(results)
