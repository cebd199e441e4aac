"""``ghanet encoders``: the encoder registry with widths, inputs and whether weights were found."""

from __future__ import annotations

import sys

import click


@click.command("encoders")
@click.option("--markdown", is_flag=True, help="Print the registry as the markdown table of docs/encoders.md.")
def encoders(markdown: bool) -> None:
    """List the patch encoders: feature width, input px, um/px, output, and the weights file found
    in the torch / Hugging Face hub caches (pass --weights FILE to extract-features otherwise)."""
    from rich.console import Console
    from rich.table import Table

    from ..features.encoders import describe_encoders
    from ..features.registry import encoder_table_markdown

    if markdown:
        click.echo(encoder_table_markdown(), nl=False)
        sys.exit(0)

    table = Table(title="ghanet encoders (--encoder NAME)")
    for col in ("name", "width", "input px", "um/px", "output", "weights"):
        table.add_column(col, overflow="fold")
    for row in describe_encoders():
        size = row["input_size"] or "patch (256)"
        weights = f"[green]{row['weights']}[/]" if row["weights"] else (
            f"[yellow]not found[/] ({' / '.join(row['weight_files'])}"
            + (f"; {row['card']}" + (", gated" if row["gated"] else "") if row["card"] else "") + ")")
        table.add_row(str(row["name"]), str(row["dim"]), str(size), f"{row['input_mpp'] or '-'}",
                      str(row["output"]), weights)
    Console().print(table)
    sys.exit(0)
