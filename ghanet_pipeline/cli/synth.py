"""``ghanet synth``: write synthetic data for tests and demos (``synth slide``; more subcommands may follow)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("synth")
def synth() -> None:
    """Write synthetic slides (and cohorts) that behave like real inputs."""


@synth.command("slide")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--size", nargs=2, type=click.IntRange(min=16), default=(4000, 3000), show_default=True,
              metavar="W H", help="Level-0 width and height in px.")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="Level-0 um/px (0.5 = 20x, 0.25 = 40x).")
@click.option("--phenotype", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of the tissue drawn as dense dark-nuclei regions.")
@click.option("--seed", type=int, default=0, show_default=True, help="Tissue layout and texture seed.")
@click.option("--metadata", "metadata_kind", type=click.Choice(["aperio", "objective", "resolution", "none"]),
              default="aperio", show_default=True,
              help="aperio: Aperio description with AppMag and MPP; objective: AppMag only; resolution: "
                   "TIFF resolution tags only; none: no scale at all.")
@click.option("--no-metadata", is_flag=True, help="Same as --metadata none.")
def slide(out: Path, size: tuple[int, int], mpp: float, phenotype: float, seed: int, metadata_kind: str,
          no_metadata: bool) -> None:
    """Write a pyramidal tiled-JPEG TIFF slide to OUT (OpenSlide reads it as Aperio)."""
    import time

    from ..wsi.synthetic import write_synthetic_slide

    t0 = time.perf_counter()
    path = write_synthetic_slide(out, size[0], size[1], mpp=mpp, phenotype=phenotype, seed=seed,
                                 metadata="none" if no_metadata else metadata_kind)
    click.echo(f"wrote {path} ({size[0]}x{size[1]} px at {mpp:g} um/px, phenotype {phenotype:g}, seed {seed}, "
               f"{path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")


def _table_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if Path(value).name != value or not value.endswith((".csv", ".csv.zip")) or value.startswith("."):
        raise click.BadParameter(f"{value!r} must be a plain file name ending in .csv or .csv.zip (it is "
                                 f"written inside OUT_DIR), e.g. genomics_table.csv.zip")
    return value


@synth.command("cohort")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cases", "n_cases", type=click.IntRange(min=4), default=40, show_default=True,
              help="Number of patients.")
@click.option("--seed", type=int, default=0, show_default=True, help="Cohort seed.")
@click.option("--table-name", default="genomics_table.csv.zip", show_default=True, callback=_table_name,
              help="File name of the MCAT-style table (.csv or .csv.zip).")
def cohort(out_dir: Path, n_cases: int, seed: int, table_name: str) -> None:
    """Write a synthetic cohort's tables to OUT_DIR: MCAT-style genomics table, raw counts, clinical
    (one row per slide, with the hidden phenotype), gene families. Slides: `ghanet synth slide --phenotype`."""
    from ..demo.cohort import make_cohort, write_cohort_tables

    c = make_cohort(n_cases=n_cases, seed=seed)
    paths = write_cohort_tables(c, out_dir, table_name=table_name)
    cases = c.cases
    click.echo(f"{n_cases} cases, {len(c.clinical)} slides, {len(c.genes)} genes, "
               f"{cases['censorship'].mean():.0%} censored; planted genes in: {', '.join(c.planted)}")
    for key, p in paths.items():
        click.echo(f"  {key:9s} {p}")
