"""File names from ids (core/ids.py): sanitising, collisions, staying inside the output directory."""

from __future__ import annotations

import pytest

from ghanet_pipeline.core.errors import InputError
from ghanet_pipeline.core.ids import safe_child, sanitize_id, sanitize_ids


@pytest.mark.parametrize("raw, safe", [
    ("TCGA-A1-0001-01Z", "TCGA-A1-0001-01Z"),
    ("a/b\\c", "a_b_c"),
    ("../../etc/passwd", "_.._etc_passwd"),
    (".hidden", "hidden"),
    ("tab\there", "tab_here"),
    ("  spaced  ", "spaced"),
    ("C:evil", "C_evil"),
])
def test_sanitize_id(raw, safe):
    out = sanitize_id(raw)
    assert out == safe
    assert "/" not in out and "\\" not in out and not out.startswith(".")


@pytest.mark.parametrize("raw", ["", "..", ".", "/", "  ", "../"])
def test_sanitize_id_refuses_empty(raw):
    with pytest.raises(InputError, match="cannot be used as a file name"):
        sanitize_id(raw, what="slide_id")


def test_sanitize_ids_collision():
    assert sanitize_ids(["a", "b"]) == {"a": "a", "b": "b"}
    with pytest.raises(InputError, match=r"'a/b' and 'a_b' both become file name 'a_b'"):
        sanitize_ids(["a/b", "a_b"], what="slide_id")


def test_safe_child(tmp_path):
    assert safe_child(tmp_path, "segment", "x.h5") == (tmp_path / "segment" / "x.h5").resolve()
    with pytest.raises(InputError, match="outside the output directory"):
        safe_child(tmp_path, "..", "x.h5")
    with pytest.raises(InputError, match="outside the output directory"):
        safe_child(tmp_path, "/etc/passwd")
