"""docs/encoders.md's registry table is the one the registry prints (`ghanet encoders --markdown`)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.features.encoders import ENCODERS
from ghanet_pipeline.features.registry import DEFAULT_ENCODER, encoder_table_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "encoders.md"
START, END = "<!-- generated from the registry", "<!-- end of generated table -->"


def test_docs_table_is_the_registry():
    text = DOC.read_text()
    block = text[text.index(START):text.index(END)]
    table = block[block.index("\n") + 1:]
    assert table == encoder_table_markdown(), "regenerate it: ghanet encoders --markdown"


def test_table_lists_every_entry_default_first_with_its_licence():
    rows = encoder_table_markdown().splitlines()[2:]
    assert len(rows) == len(ENCODERS)
    assert rows[0].startswith(f"| `{DEFAULT_ENCODER}` |")
    assert all(row.rstrip(" |").split("|")[-1].strip() for row in rows), "an entry has no licence"
    res = CliRunner().invoke(cli, ["encoders", "--markdown"])
    assert res.exit_code == 0 and res.output == encoder_table_markdown()
