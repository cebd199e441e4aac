"""Crash tests (marker ``chaos``): each stage is SIGKILLed at seeded random moments and rerun; its outputs must
equal an uninterrupted run's, and two processes on the same output folder must lose nothing.

A small number of kill points per stage here, one in each third of the part of the run in which the stage writes
(from its first write to its end); ``pipelines/testing/chaos.py --n 50`` runs many more (docs/reliability.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.chaos

#: kill points per stage: one in each third of (first write, end). Kills are no longer drawn from the whole run
#: (0, end), where about half of them fell in the interpreter's start-up before anything was written (those
#: reruns were plain reruns, already covered by the pair of processes below)
N_KILLS = 3


def _harness():
    path = Path(__file__).resolve().parents[2] / "pipelines" / "testing" / "chaos.py"
    spec = importlib.util.spec_from_file_location("ghanet_chaos", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


CHAOS = _harness()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return CHAOS.prepare_inputs(tmp_path_factory.mktemp("chaos-inputs"))


def test_comparator_ignores_only_named_volatile_entries(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"risk": 1.5, "seconds": {"total": 3.0}}')
    b.write_text('{"risk": 1.5, "seconds": {"total": 9.0}}')
    assert CHAOS.same_file(a, b) == ""
    b.write_text('{"risk": 1.6, "seconds": {"total": 3.0}}')
    assert "differs" in CHAOS.same_file(a, b)
    c, d = tmp_path / "c.csv", tmp_path / "d.csv"
    c.write_text("case_id,risk,seconds_total\nx,1.0,3\n")
    d.write_text("case_id,risk,seconds_total\nx,1.0,4\n")
    assert CHAOS.same_file(c, d) == ""
    d.write_text("case_id,risk,seconds_total\nx,1.1,3\n")
    assert CHAOS.same_file(c, d) != ""
    (tmp_path / "r").mkdir()
    (tmp_path / "g").mkdir()
    (tmp_path / "r" / "x.bin").write_bytes(b"1")
    (tmp_path / "g" / ".x.bin.123.tmp").write_bytes(b"")
    diffs, leftovers = CHAOS.compare_trees(tmp_path / "r", tmp_path / "g")
    assert diffs == ["missing x.bin"] and leftovers == [".x.bin.123.tmp"]


@pytest.mark.parametrize("stage", CHAOS.STAGES)
def test_kill_rerun_gives_identical_outputs(stage, inputs, tmp_path):
    report = CHAOS.chaos_stage(stage, inputs, N_KILLS, seed=0, work=tmp_path, concurrent=True, control=False,
                                 log=print)
    assert report.control_identical, f"{stage} is not deterministic: {report.control_diffs}"
    assert report.n_killed > 0, f"{stage}: every run ended before its kill moment: {report.points}"
    bad = [p for p in report.points if not p.identical]
    assert not bad, f"{stage}: {len(bad)} of {len(report.points)} kill points did not give identical outputs: {bad}"
    left = [(p.at_s, p.leftovers) for p in report.points if p.leftovers]
    assert not left, f"{stage}: temporary files of killed runs still there after the rerun: {left}"
    assert not report.concurrent_diffs, f"{stage}: two processes at once: {report.concurrent_diffs}"
