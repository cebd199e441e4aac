"""The Snakemake workflow (pipelines/Snakefile): SLURM-profile dry run and a tiny cohort end to end.

The end-to-end test is marked ``workflow`` (deselect locally with ``-m "not workflow"``; CI runs it).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    REPO,
    SNAKEMAKE,
    check_workflow_outputs,
    run_snakemake,
    workflow_config,
    write_csv,
)

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed (pip install '.[workflow]')")


def _job_stats(text: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table (job name -> count)."""
    block = text[text.index("Job stats:"):]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def test_slurm_profile_dry_run_plans_one_job_per_slide_per_stage_and_per_fold(tmp_path: Path) -> None:
    """`snakemake --profile pipelines/profiles/slurm -n` needs no cluster (no sbatch) and shows the plan."""
    (tmp_path / "slides").mkdir()
    train = [[f"S{i:02d}", f"slides/S{i:02d}.svs", f"C{i // 2:02d}"] for i in range(7)]  # 7 slides, 4 cases
    new = [[f"N{i}", f"slides/N{i}.svs", f"N{i}"] for i in range(2)]
    for row in train + new:
        (tmp_path / row[1]).write_bytes(b"")  # the dry run only needs the files to exist
    write_csv(tmp_path / "manifest.csv", ["slide_id", "path", "case_id"], train)
    write_csv(tmp_path / "holdout.csv", ["slide_id", "path", "case_id"], new)
    (tmp_path / "genomics_table.csv").write_text("case_id\n")
    (tmp_path / "families.csv").write_text("A\n")
    cfg = workflow_config(tmp_path, folds=4, extract={"gpu": 1})
    res = run_snakemake("--profile", "pipelines/profiles/slurm", "-n", "--configfile", str(cfg))
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout + res.stderr
    stats = _job_stats(text)
    assert stats["segment"] == 9 and stats["extract_features"] == 9  # train + new slides, one job each
    assert stats["train"] == 4  # one job per fold
    assert stats["preprocess_genomics"] == 1 and stats["report"] == 1 and stats["predict"] == 1
    # the profile's per-rule resources reach the plan: GPU partition + one GPU per extraction job
    extract_res = re.findall(r"rule extract_features:.*?resources: ([^\n]*)", text, flags=re.DOTALL)
    assert len(extract_res) == 9
    assert all("slurm_partition=gpu" in r and "gpu=1" in r and "mem_mb=16000" in r for r in extract_res)
    assert "Group job segment" in text  # small per-slide jobs bundled


@pytest.mark.workflow
def test_workflow_runs_tiny_cohort_end_to_end_and_mixes_with_cli(tiny_cohort: Path) -> None:
    import pandas as pd

    tmp = tiny_cohort
    out = tmp / "out"
    cfg = workflow_config(tmp)
    manifest = pd.read_csv(tmp / "manifest.csv")
    first = manifest.iloc[0]
    # a slide segmented by hand before the workflow runs: the workflow must reuse it, not redo it
    ghanet = Path(sys.executable).parent / "ghanet"
    pre = subprocess.run([str(ghanet), "segment", str(tmp / first.path), "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, check=False)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    hand_coords = out / "segment" / f"{first.slide_id}.coords.h5"
    mtime = hand_coords.stat().st_mtime_ns

    snakefile = str(REPO / "pipelines" / "Snakefile")  # run in tmp: Snakemake's .snakemake/ state stays there
    res = run_snakemake("-s", snakefile, "--cores", "2", "--configfile", str(cfg), cwd=tmp)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    assert hand_coords.stat().st_mtime_ns == mtime  # hand-run output kept

    check_workflow_outputs(tmp, out)

    again = run_snakemake("-s", snakefile, "--cores", "2", "--configfile", str(cfg), "-n", cwd=tmp)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
