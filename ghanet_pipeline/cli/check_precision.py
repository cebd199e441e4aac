"""``ghanet check-precision``: int8 / bf16 / OpenVINO fp32 features against PyTorch fp32 on your slides."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import int8_options, manifest_option, out_option, slides_argument


@click.command("check-precision")
@slides_argument
@manifest_option
@out_option
@click.option("--encoder", default="resnet50_trunc", show_default=True, help="Encoder from the registry.")
@click.option("--weights", default=None, metavar="PATH|random[:SEED]",
              help="Encoder weights, as for extract-features (default: the torch hub cache).")
@click.option("--resize", "input_size", type=click.IntRange(min=16), default=None, metavar="PX",
              help="Side in px given to the encoder, as for extract-features.")
@click.option("--patches", type=click.IntRange(min=3), default=128, show_default=True,
              help="Patches compared (seeded, an equal share per slide, none of the int8 calibration patches).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the compared patches.")
@int8_options
@click.option("--bf16/--no-bf16", default=None,
              help="Also compare bf16: PyTorch autocast, and OpenVINO where the CPU has bf16 instructions "
                   "[default: where the CPU has them].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU compute threads.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures as JSON [default: <out>/logs/check-precision-<time>.json].")
def check_precision(slides: tuple[str, ...], recursive: bool, mpp: float | None, case_id_from: str | None,
                    gdc_manifest: Path | None, slide_types: str | None, manifest: Path | None, out: Path,
                    encoder: str, weights: str | None, input_size: int | None, patches: int, seed: int,
                    int8_patches: int, int8_seed: int, int8_cohort: Path | None, bf16: bool | None,
                    threads: int | None, json_path: Path | None) -> None:
    """Compare int8 (and bf16, OpenVINO fp32) features with PyTorch fp32 ones on a sample of the SLIDES'
    patches: per-patch cosine percentiles, error as a fraction of the features' spread across patches,
    and the rank correlation of pairwise patch distances. The int8 model is the one extract-features
    --precision int8 makes for these slides (cached in <out>/engines/ and reused by it). Exit 0 when int8
    passes the fidelity gate, 1 when it does not."""
    import logging
    import time

    from rich.console import Console
    from rich.table import Table

    from ..core.files import write_json_atomic
    from ..core.ids import safe_child
    from ..features.engines.check import check_precision as run
    from ..wsi.gather import cohort_slides, gather_slides

    specs = gather_slides(slides, manifest, recursive, case_id_from, mpp, out=out, gdc_manifest=gdc_manifest,
                          slide_types=slide_types)
    for bad in (s for s in specs if s.problem):
        logging.getLogger("ghanet_pipeline").warning("check-precision: %s left out: %s", bad.path, bad.problem)
    specs = [s for s in specs if not s.problem]
    cohort = cohort_slides((), int8_cohort, False, case_id_from, mpp) if int8_cohort is not None else None
    res = run(specs, out, cohort=cohort, encoder=encoder, weights=weights, patches=patches, seed=seed, int8_patches=int8_patches,
              int8_seed=int8_seed, input_size=input_size, bf16=bf16, threads=threads)
    table = Table(title=f"check-precision: {res.patches} patches of {res.slides} slide(s) vs PyTorch fp32")
    for col in ("features", "cosine p1", "cosine p5", "cosine median", "cosine min", "error / spread",
                "distance rank", "s", "gate"):
        table.add_column(col, justify="left" if col == "features" else "right")
    for name, f in res.rows.items():
        c = f["cosine"]
        gate = "[green]pass[/]" if f["passes_gate"] else "[red]FAIL[/]"
        table.add_row(name, f"{c['p1']:.4f}", f"{c['p5']:.4f}", f"{c['p50']:.5f}", f"{c['min']:.4f}",
                      f"{f['error_spread']:.3f}", f"{f['distance_rank']:.4f}", f"{f['seconds']:.1f}", gate)
    con = Console(width=None if sys.stdout.isatty() else 160)
    con.print(table)
    con.print(f"gate: error <= {res.to_json()['gate']['max_error_spread']} of the spread and distance rank >= "
              f"{res.to_json()['gate']['min_distance_rank']}. int8 model: {res.int8_model or 'none'}")
    from ..features.engines.int8 import make_up

    if mix := make_up(res.int8_record or {}):
        con.print(f"int8 model: {mix}")
    for note in res.notes:
        con.print(f"[yellow]note:[/] {note}")
    dest = json_path or safe_child(out, "logs", f"check-precision-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_json_atomic(dest, res.to_json())
    con.print(f"written: {dest}")
    int8 = res.rows.get("openvino int8")
    sys.exit(0 if int8 is not None and int8["passes_gate"] else 1)
