"""``ghanet calibrate-encoder``: re-estimate a random-weight encoder's statistics on cohort patches."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import manifest_option, out_option, overwrite_option, slides_argument


@click.command("calibrate-encoder")
@slides_argument
@manifest_option
@out_option
@click.option("--encoder", default="resnet50_trunc", show_default=True, help="Encoder from the registry.")
@click.option("--weights", default="random", show_default=True, metavar="random[:SEED]|PATH",
              help="Weights to calibrate (meant for 'random:<seed>'; pre-trained weights do not need it).")
@click.option("--patches", "n_patches", type=click.IntRange(min=16), default=512, show_default=True,
              help="Patches drawn (seeded) from the slides' patch grids.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the patch draw.")
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True,
              help="Patches per forward pass (BatchNorm statistics are averaged over the batches).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights file to write [default: <out>/encoders/<encoder>_<weights>_calibrated.safetensors].")
@overwrite_option
def calibrate_encoder(slides: tuple[str, ...], recursive: bool, mpp: float | None, case_id_from: str | None,
                      gdc_manifest: Path | None, slide_types: str | None,
                      manifest: Path | None, out: Path, encoder: str, weights: str, n_patches: int, seed: int,
                      batch_size: int, output: Path | None, overwrite: bool) -> None:
    """Calibrate ENCODER with WEIGHTS on patches of the slides (patch grids from `ghanet segment` in
    <out>/segment, made with defaults when missing) and save the result as a .safetensors weights file.
    Pass that file as --weights to extract-features and predict."""
    from rich.console import Console

    from ..features.calibrate import calibrate_encoder as run
    from ..wsi.gather import gather_slides

    specs = gather_slides(slides, manifest, recursive, case_id_from, mpp, out=out, gdc_manifest=gdc_manifest,
                          slide_types=slide_types)
    for s in specs:
        if s.problem:
            click.echo(f"calibrate-encoder: slide {s.slide_id} left out: {s.problem}", err=True)
    specs = [s for s in specs if not s.problem]
    res = run(specs, out, encoder=encoder, weights=weights, n_patches=n_patches, seed=seed,
              batch_size=batch_size, output=output, overwrite=overwrite)
    con = Console()
    verb = "reused" if res.reused else "wrote"
    con.print(f"calibrate-encoder: {verb} {res.path}")
    con.print(f"  sha256 {res.sha256}  ({res.record.get('method')}, {res.record.get('n_patches')} patches of "
              f"{len(res.record.get('slides_used', []))} slides, base weights {res.record.get('base_weights_id')})")
    con.print(f"  next: ghanet extract-features ... --weights {res.path}")
    sys.exit(0)
