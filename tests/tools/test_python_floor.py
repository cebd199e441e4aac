"""One Python floor everywhere: setup.cfg's ``python_requires`` is the oldest Python every pin of
constraints.txt installs on (each pin's own Requires-Python), and README, Makefile, Dockerfile, the docs and
ruff's target version state that same floor. Also: LICENSE matches setup.cfg's licence, CITATION.cff is
there and cites the G-HANet paper by its arXiv id."""

from __future__ import annotations

import configparser
import importlib.metadata as md
import re
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
#: where the floor is stated for users, and how (minor version captured)
STATED = {
    "README.md": r"Python >= 3\.(\d+)",
    "Makefile": r"python3 >= 3\.(\d+)",
    "Dockerfile": r"python3 >= 3\.(\d+)",
    "docs/workflow.md": r"python3 >= 3\.(\d+)",
    "pyproject.toml": r'target-version = "py3(\d+)"',
}


def _floor() -> int:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    m = re.fullmatch(r">=\s*3\.(\d+)", cfg["options"]["python_requires"].strip())
    assert m, "python_requires must read >=3.N"
    return int(m.group(1))


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins


def _requires_python() -> dict[str, str]:
    """Requires-Python of each pin installed here at its pinned version (pip's own metadata)."""
    out = {}
    for name, version in _pins().items():
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if dist.version == version:
            out[f"{name}=={version}"] = dist.metadata.get("Requires-Python") or ""
    return out


def test_python_requires_is_the_oldest_python_the_pins_install_on() -> None:
    floor = _floor()
    req = _requires_python()
    if len(req) < len(_pins()) // 2:
        pytest.skip("the pinned versions are not installed here (make setup installs them)")
    refused = {pin: spec for pin, spec in req.items() if spec and not SpecifierSet(spec).contains(f"3.{floor}")}
    assert not refused, f"setup.cfg says Python >= 3.{floor}, but these pins need more: {refused}"
    needs_floor = [pin for pin, spec in req.items() if spec and not SpecifierSet(spec).contains(f"3.{floor - 1}")]
    assert needs_floor, f"every pin installs on 3.{floor - 1}: lower python_requires (and the docs) to it"


@pytest.mark.parametrize("path", sorted(STATED))
def test_every_document_states_the_same_floor(path: str) -> None:
    found = {int(m) for m in re.findall(STATED[path], (REPO / path).read_text())}
    assert found == {_floor()}, f"{path} states Python 3.{sorted(found)} (setup.cfg: 3.{_floor()})"


def test_license_file_matches_setup_cfg_and_citation_names_the_paper() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["metadata"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0"
    from ghanet_pipeline import __version__

    assert cff["version"] == __version__
    paper = next(r for r in cff["references"] if "Histo-Genomic Knowledge Distillation" in r["title"])
    assert any(i["value"] == "arXiv:2403.10040" for i in paper["identifiers"])
