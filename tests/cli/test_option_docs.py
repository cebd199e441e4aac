"""The option tables of docs/training.md and docs/predict.md list every option of `train` and `predict`, and
no option that is not there (the pages are read against the commands)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from ghanet_pipeline.cli import cli

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize(("command", "page"), [("train", "training.md"), ("predict", "predict.md")])
def test_option_table_matches_the_command(command: str, page: str) -> None:
    cmd = cli.get_command(click.Context(cli), command)
    options = {max(p.opts, key=len) for p in cmd.params if isinstance(p, click.Option)}
    text = (DOCS / page).read_text()
    table = text[text.index("**Options**"):]
    table = table[: table.index("\n\n", table.index("| option |"))]
    listed = set(re.findall(r"^\| `(--[a-z0-9-]+)", table, flags=re.MULTILINE))
    assert listed == options, f"{page}: missing {sorted(options - listed)}, not options {sorted(listed - options)}"
