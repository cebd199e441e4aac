"""The Snakemake workflow (pipelines/Snakefile): SLURM-profile dry run and a tiny cohort end to end.

The end-to-end test is marked ``workflow`` (deselect locally with ``-m "not workflow"``; CI runs it).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed (pip install '.[workflow]')")


def _snakemake(*args: str, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(SNAKEMAKE), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


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


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _config(tmp: Path, **over: object) -> Path:
    cfg = {"out": str(tmp / "out"), "manifest": str(tmp / "manifest.csv"),
           "genomics_table": str(tmp / "genomics_table.csv"), "families": str(tmp / "families.csv"),
           "predict_manifest": str(tmp / "holdout.csv"), "folds": 3,
           "extract": {"weights": "random", "device": "cpu", "num_workers": 0, "gpu": 0, "threads": 1},
           "train": {"run_name": "wf", "model": "ghanet", "epochs": 2, "device": "cpu"},
           "predict": {"device": "cpu"}}
    for k, v in over.items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_slurm_profile_dry_run_plans_one_job_per_slide_per_stage_and_per_fold(tmp_path: Path) -> None:
    """`snakemake --profile pipelines/profiles/slurm -n` needs no cluster (no sbatch) and shows the plan."""
    (tmp_path / "slides").mkdir()
    train = [[f"S{i:02d}", f"slides/S{i:02d}.svs", f"C{i // 2:02d}"] for i in range(7)]  # 7 slides, 4 cases
    new = [[f"N{i}", f"slides/N{i}.svs", f"N{i}"] for i in range(2)]
    for row in train + new:
        (tmp_path / row[1]).write_bytes(b"")  # the dry run only needs the files to exist
    _write_csv(tmp_path / "manifest.csv", ["slide_id", "path", "case_id"], train)
    _write_csv(tmp_path / "holdout.csv", ["slide_id", "path", "case_id"], new)
    (tmp_path / "genomics_table.csv").write_text("case_id\n")
    (tmp_path / "families.csv").write_text("A\n")
    cfg = _config(tmp_path, folds=4, extract={"gpu": 1})
    res = _snakemake("--profile", "pipelines/profiles/slurm", "-n", "--configfile", str(cfg))
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout + res.stderr
    stats = _job_stats(text)
    assert stats["segment"] == 9 and stats["extract_features"] == 9  # train + new slides, one job each
    assert stats["train"] == 4  # one job per fold
    assert stats["preprocess_genomics"] == 1 and stats["report"] == 1 and stats["predict"] == 1
    # the profile's per-rule resources reach the plan: GPU partition + one GPU per extraction job
    extract_res = re.findall(r"rule extract_features:.*?resources: ([^\n]*)", text, flags=re.S)
    assert len(extract_res) == 9
    assert all("slurm_partition=gpu" in r and "gpu=1" in r and "mem_mb=16000" in r for r in extract_res)
    assert "Group job segment" in text  # small per-slide jobs bundled


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 cases (+2 held-out) with 768 px synthetic slides carrying the phenotype, MCAT table, families."""
    from ghanet_pipeline.demo.cohort import make_cohort, write_cohort_tables
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    tmp = tmp_path_factory.mktemp("wf")
    cohort = make_cohort(n_cases=12, seed=3, second_slide_fraction=0.0)
    write_cohort_tables(cohort, tmp, table_name="genomics_table.csv")
    (tmp / "slides").mkdir()
    rows = []
    for i, r in enumerate(cohort.clinical.itertuples()):
        write_synthetic_slide(tmp / "slides" / f"{r.slide_id}.tif", 768, 768, phenotype=float(r.phenotype), seed=i)
        rows.append([r.slide_id, f"slides/{r.slide_id}.tif", r.case_id])
    _write_csv(tmp / "manifest.csv", ["slide_id", "path", "case_id"], rows)
    new = []
    for i, ph in enumerate((0.1, 0.9)):
        write_synthetic_slide(tmp / "slides" / f"NEW-{i}.tif", 768, 768, phenotype=ph, seed=100 + i)
        new.append([f"NEW-{i}", f"slides/NEW-{i}.tif", f"NEW-{i}"])
    _write_csv(tmp / "holdout.csv", ["slide_id", "path", "case_id"], new)
    return tmp


@pytest.mark.workflow
def test_workflow_runs_tiny_cohort_end_to_end_and_mixes_with_cli(tiny_cohort: Path) -> None:
    import h5py
    import pandas as pd

    tmp = tiny_cohort
    out = tmp / "out"
    cfg = _config(tmp)
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
    res = _snakemake("-s", snakefile, "--cores", "2", "--configfile", str(cfg), cwd=tmp)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    assert hand_coords.stat().st_mtime_ns == mtime  # hand-run output kept

    bags = sorted((out / "features").glob("*/*.h5"))
    assert {b.stem for b in bags} == set(manifest.slide_id) | {"NEW-0", "NEW-1"}
    for b in bags:  # bag rows = segment's grid
        with h5py.File(b) as f, h5py.File(out / "segment" / f"{b.stem}.coords.h5") as c:
            assert f.attrs["complete"] and (f["coords"][:] == c["coords"][:]).all()
    for k in range(3):
        hist = json.loads((out / "train" / "wf" / f"fold_{k}" / "history.json").read_text())
        assert hist["complete"] and len(hist["epochs"]) == 2
    report = json.loads((out / "train" / "wf" / "report" / "metrics.json").read_text())
    assert len(report["c_index_per_fold"]) == 3
    merged = json.loads((out / "train" / "wf" / "metrics.json").read_text())
    assert len(merged["c_index_per_fold"]) == 3  # the run-level report covers every fold, not the last job's
    pred = pd.read_csv(out / "predict" / "predictions.csv")
    assert set(pred.case_id) == {"NEW-0", "NEW-1"}
    assert pred.risk.notna().all()

    again = _snakemake("-s", snakefile, "--cores", "2", "--configfile", str(cfg), "-n", cwd=tmp)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
