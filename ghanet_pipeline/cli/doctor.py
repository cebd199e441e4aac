"""``ghanet doctor``: what is installed and whether this machine can run the pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import out_option


@click.command("doctor")
@out_option
def doctor(out: Path) -> None:
    """Print versions, OpenSlide, torch/CUDA, where ResNet50 weights are looked for, output dir check."""
    from rich.console import Console
    from rich.table import Table

    from ..env.doctor import run_checks

    checks = run_checks(out)
    table = Table(title="ghanet doctor")
    table.add_column("check")
    table.add_column("ok")
    table.add_column("value", overflow="fold")
    for c in checks:
        table.add_row(c.name, "[green]yes[/]" if c.ok else "[red]no[/]", c.value)
    Console().print(table)
    sys.exit(0 if all(c.ok or not c.required for c in checks) else 1)
