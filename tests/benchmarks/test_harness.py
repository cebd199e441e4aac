"""The benchmark harness (benchmarks/harness) and the doc-table generator (benchmarks/report.py) on tiny inputs:
records carry the machine facts and rows, the generator rewrites only the marked blocks, Stats are ordered."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from benchmarks import report, suite
from benchmarks.harness import Bench, Stats, WorkerFailed, check_record, interleave, newest_records, run_process, stats, timed, write_record
from benchmarks.harness.__main__ import main as harness_cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def test_timed_reports_min_le_median_le_max_and_skips_warmup():
    calls = []

    def work():
        calls.append(1)
        sum(range(2000 * len(calls)))  # later calls do more work
        return len(calls)

    secs, last = timed(work, repeats=5, warmup=2)
    assert secs.n == 5 and len(calls) == 7 and last == 7
    assert 0 < secs.min <= secs.median <= secs.max
    assert secs.values == tuple(sorted(secs.values, key=lambda v: secs.values.index(v)))  # kept in call order
    rate = stats([2.0, 4.0, 1.0]).rate(8)
    assert (rate.min, rate.median, rate.max) == (2.0, 4.0, 8.0)
    assert Stats.from_json(rate.to_json()) == rate
    with pytest.raises(ValueError):
        stats([])


def test_interleave_alternates_and_keeps_complete_rounds_on_ctrl_c():
    order = []
    rounds = interleave(["a", "b"], 3, lambda n, r: order.append((r, n)) or r, alternate=True)
    assert order == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert rounds.results == {"a": [0, 1, 2], "b": [0, 1, 2]} and rounds.complete == 3

    def stop_in_round_2(name, r):
        if r == 1 and name == "b":
            raise KeyboardInterrupt
        return r

    cut = interleave(["a", "b"], 3, stop_in_round_2)
    assert cut.interrupted and cut.complete == 1 and cut.results == {"a": [0], "b": [0]}
    with pytest.raises(KeyboardInterrupt):
        interleave(["a"], 2, lambda n, r: (_ for _ in ()).throw(KeyboardInterrupt))


def test_bench_writes_one_record_with_machine_facts_and_rows(tmp_path):
    with Bench("tiny", "a tiny run", {"size": 3, "results": None}, results=tmp_path,
               argv=["benchmarks/bench_tiny.py", "--size", "3", "--results", str(tmp_path)]) as bench:
        bench.unit("seconds", "s")
        bench.unit("patches", "")
        bench.row(step="first", seconds=stats([0.3, 0.1, 0.2]), patches=12)
        bench.row(table="other", step="second", seconds=stats([1.0]), ratio=float("nan"))
        bench.unit("ratio", "x")
        bench.note("a note")
    files = list(tmp_path.glob("tiny-*.json"))
    assert files == [bench.path] and re.fullmatch(r"tiny-\d{8}T\d{6}Z\.json", files[0].name)
    rec = json.loads(files[0].read_text())
    assert check_record(rec) == []
    assert rec["schema"] == "ghanet-bench/1" and rec["bench"] == "tiny" and rec["params"] == {"size": 3}
    assert rec["command"] == "python -m benchmarks.bench_tiny --size 3"  # where the record went is left out
    m = rec["machine"]
    assert m["cpu_model"] and isinstance(m["cpu_flags"], list) and m["cores"] >= 1 and m["torch"]
    assert all(f.startswith(("sse4_2", "avx", "fma", "f16c", "amx")) for f in m["cpu_flags"])
    assert isinstance(m["avx512"], bool) and isinstance(m["amx"], bool) and "commit" in m
    assert len(rec["load"]["before"]) == 3 and len(rec["load"]["after"]) == 3
    first, second = rec["rows"]
    assert first["seconds"]["min"] == 0.1 and first["seconds"]["median"] == 0.2 and first["seconds"]["max"] == 0.3
    assert first["patches"] == 12 and second["table"] == "other" and second["ratio"] is None  # NaN: null in JSON
    assert rec["units"] == {"seconds": "s", "patches": "", "ratio": "x"} and rec["notes"] == [{"table": "main", "text": "a note"}]


def test_bench_writes_nothing_on_error_or_for_a_field_without_unit(tmp_path):
    with pytest.raises(RuntimeError), Bench("tiny", "t", results=tmp_path, argv=["x"]) as bench:
        bench.row(step="a")
        raise RuntimeError("measurement failed")
    with pytest.raises(ValueError, match="'seconds' has no unit"), Bench("tiny", "t", results=tmp_path, argv=["x"]) as b:
        b.row(seconds=1.5)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="bench name"):
        Bench("Bad-Name", "t")


def _record(tmp_path: Path, started: str, value: float) -> Path:
    with Bench("tiny", "t", results=tmp_path / "scratch", argv=["python", "x.py"]) as bench:
        bench.unit("seconds", "s")
        bench.row(step="work", seconds=stats([value, value + 1]))
        bench.row(table="extra", step="other", seconds=stats([9.0]))
    rec = json.loads(bench.path.read_text())
    rec["started"] = started
    return write_record(rec, tmp_path / "results")


def test_report_rewrites_only_the_marked_blocks_from_the_newest_record(tmp_path):
    _record(tmp_path, "2026-01-01T00:00:00Z", 1.25)
    newest = _record(tmp_path, "2026-02-01T00:00:00Z", 7.5)
    _record(tmp_path, "2025-12-01T00:00:00Z", 3.75)  # written last, started first: not the newest
    (tmp_path / "results" / "broken.json").write_text("{not json")
    before = "# Title\n\nHand-written text | with a pipe.\n\n"
    middle = "\nMore text, kept.\n\n<!-- bench:nosuch -->\nleft as it is\n<!-- /bench -->\n\n"
    doc = tmp_path / "doc.md"
    doc.write_text(before + "<!-- bench:tiny -->\nold table\n<!-- /bench -->\n" + middle
                   + "<!-- bench:tiny:extra -->\n<!-- /bench -->\nend\n")
    assert newest_records(tmp_path / "results")["tiny"][0] == newest
    rc = report.main(["--doc", str(doc), "--results", str(tmp_path / "results")])
    text = doc.read_text()
    assert rc == 0 and text.startswith(before + "<!-- bench:tiny -->\n_`python x.py`")
    block = text.split("<!-- bench:tiny -->\n")[1].split("<!-- /bench -->")[0]
    assert "| step | time (s) min / median |" in block and "| work | 7.50 / 8.00 |" in block
    assert "old table" not in text and "1.25" not in text and "3.75" not in text
    assert middle in text and text.endswith("<!-- /bench -->\nend\n")
    extra = text.split("<!-- bench:tiny:extra -->\n")[1]
    assert extra.startswith(f"_Same run (record `{newest.name}`), CPU ") and "| other | 9.00 |" in extra
    assert report.main(["--doc", str(doc), "--results", str(tmp_path / "results")]) == 0
    assert doc.read_text() == text  # a second run changes nothing
    assert report.main(["--check", "--doc", str(doc), "--results", str(tmp_path / "results")]) == 1  # nosuch: no record
    doc.write_text(text.replace(middle, "\n"))
    assert report.main(["--check", "--doc", str(doc), "--results", str(tmp_path / "results")]) == 0
    doc.write_text(text.replace(middle, "\n").replace("7.50 / 8.00", "7.00 / 8.00"))
    assert report.main(["--check", "--doc", str(doc), "--results", str(tmp_path / "results")]) == 1


def test_run_process_times_a_whole_child_with_its_own_peak_memory():
    small = run_process([sys.executable, "-c", "import json; print('noise'); print(json.dumps({'a': 1}))"])
    big = run_process([sys.executable, "-c", "x = b'1' * (200 << 20); print(len(x))"])
    assert small.result() == {"a": 1} and small.seconds > 0 and small.returncode == 0
    assert big.peak_rss_gib - small.peak_rss_gib > 0.15  # 200 MiB touched in the child
    assert small.peak_rss_gib < 0.1  # not this (pytest) process's memory, which Linux carries across fork + exec
    with pytest.raises(WorkerFailed, match="went wrong"):
        run_process([sys.executable, "-c", "import sys; sys.exit('went wrong')"])
    assert run_process([sys.executable, "-c", "raise SystemExit(3)"], check=False).returncode == 3


def test_harness_cli_writes_a_record_from_json_rows(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"batch": 256, "patches_per_s": 812.5}\n{"table": "reader", "patches_per_s": 4000}\n')
    rc = harness_cli(["record", "gpu_check", str(rows), "--title", "GPU", "--unit", "batch=", "--unit",
                      "patches_per_s=patches/s", "--param", "slides=2", "--load-before", "0.5 0.4 0.3",
                      "--started", "2026-03-01T10:00:00Z", "--results", str(tmp_path / "res"), "--",
                      "bash", "benchmarks/gpu_check.sh"])
    assert rc == 0
    (path,) = (tmp_path / "res").glob("gpu_check-20260301T100000Z.json")
    rec = json.loads(path.read_text())
    assert check_record(rec) == [] and rec["load"]["before"] == [0.5, 0.4, 0.3] and rec["params"] == {"slides": "2"}
    assert rec["command"] == "bash benchmarks/gpu_check.sh" and [r["table"] for r in rec["rows"]] == ["main", "reader"]
    assert "| 256 | 812 |" in capsys.readouterr().out
    rows.write_text('{"patches_per_s": 1.0}\n')  # no unit given for a number: refused, nothing written
    with pytest.raises(ValueError, match="no unit"):
        harness_cli(["record", "x", str(rows), "--title", "t", "--results", str(tmp_path / "res2")])
    rows.write_text("")
    assert harness_cli(["record", "x", str(rows), "--title", "t", "--results", str(tmp_path / "res2")]) == 2
    assert not (tmp_path / "res2").exists()


def test_every_marker_in_the_docs_names_a_bench_of_the_suite():
    markers = set(re.findall(r"<!-- bench:([a-z0-9_]+)(?::[a-z0-9_]+)? -->", DOC.read_text()))
    benches = {e.bench for e in suite.SUITE}
    assert markers and markers <= benches, markers - benches
    assert len(benches) == len(suite.SUITE)  # one entry per bench name


def test_paired_differences_pair_the_same_validation_folds_only():
    from benchmarks.cv_replicates import paired, train_overrides
    from ghanet_pipeline.evaluation.paired import t_interval

    rows = [{"bags": "int8", "split": 0, "seed": 0, "per_fold": {0: 0.70, 1: 0.60, 2: None}},
            {"bags": "fp32", "split": 0, "seed": 0, "per_fold": {0: 0.65, 1: 0.70, 2: 0.50}},
            {"bags": "int8", "split": 1, "seed": 0, "per_fold": {0: 0.80}},  # no fp32 replicate of split 1
            {"bags": "fp32", "split": 0, "seed": 1, "per_fold": {0: 0.90}}]  # no int8 replicate of seed 1
    d = paired(rows, "bags", "int8", "fp32")
    assert d.n == 2 and d.mean == pytest.approx(-0.025) and (d.a_higher, d.ties) == (1, 0)
    m, lo, hi = t_interval([0.05, -0.10])
    assert m == pytest.approx(-0.025) and lo < m < hi and hi - m == pytest.approx(m - lo)
    assert t_interval([0.3])[0] == 0.3 and t_interval([0.3])[1] != t_interval([0.3])[1]  # one value: NaN bounds
    assert train_overrides("accum=4,lr=5e-4,dim=128") == {"accum": 4, "lr": 5e-4, "dim": 128}


def test_suite_takes_the_rehearsal_inputs_from_the_mcat_folder(tmp_path):
    import argparse

    ctx = argparse.Namespace(mcat=tmp_path, smoke=True, real_slide=None, demo_out=tmp_path)
    entry = next(e for e in suite.SUITE if e.bench == "rehearsal")
    assert "no MCAT table" in entry.needs(ctx)
    (tmp_path / "tcga_x_all_clean.csv.zip").write_bytes(b"")
    (tmp_path / "signatures.csv").write_text("")
    (tmp_path / "splits_tcga_x").mkdir()
    assert entry.needs(ctx) is None
    argv = entry.argv(ctx)
    assert argv[argv.index("--table") + 1] == str(tmp_path / "tcga_x_all_clean.csv.zip")
    assert argv[argv.index("--families") + 1] == str(tmp_path / "signatures.csv")
    assert "--splits" not in argv and "--cases" in argv  # smoke: a few cases, folds of their own
    ctx.smoke = False
    argv = entry.argv(ctx)
    assert argv[argv.index("--splits") + 1] == str(tmp_path / "splits_tcga_x") and "--cases" not in argv


def test_docs_show_path_arguments_by_file_name_only():
    """A record's command names the machine's folders; the docs' caption shows file names (the repo's docs
    point to no folder outside it), the record keeps the full argv."""
    from benchmarks.harness.render import shown_command

    cmd = "python -m benchmarks.rehearsal --table /data/mcat/tcga_luad_all_clean.csv.zip --work /scratch/run --cases 20"
    assert shown_command(cmd) == "python -m benchmarks.rehearsal --table tcga_luad_all_clean.csv.zip --work run --cases 20"
    assert shown_command("python -m benchmarks.x --out rel/dir /") == "python -m benchmarks.x --out rel/dir /"
