"""The Snakemake workflow (pipelines/Snakefile): dry runs (the SLURM profile's plan, options reaching the
commands, bad config values refused before any job) and a tiny cohort end to end.

Every test starts Snakemake and is marked ``workflow`` (not in `make test-fast`; `make test` and CI run them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ghanet_pipeline.testing import check_workflow_outputs, snakemake_path, workflow_config, write_csv
from ghanet_pipeline.testing import run_snakemake as _run_snakemake

#: every test here starts Snakemake (a few seconds each, dry runs included): marker ``workflow``
pytestmark = [pytest.mark.workflow,
              pytest.mark.skipif(not snakemake_path().exists(), reason="snakemake not installed (pip install '.[workflow]')")]

#: repository root (pipelines/Snakefile, pipelines/profiles/...)
REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = str(REPO / "pipelines" / "Snakefile")


def run_snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return _run_snakemake(*args, cwd=cwd)


def _empty_cohort(tmp: Path, n_train: int = 7, n_new: int = 2) -> None:
    """Manifests of empty slide files + placeholder tables: enough for a dry run (`snakemake -n`)."""
    (tmp / "slides").mkdir()
    train = [[f"S{i:02d}", f"slides/S{i:02d}.svs", f"C{i // 2:02d}"] for i in range(n_train)]
    new = [[f"N{i}", f"slides/N{i}.svs", f"N{i}"] for i in range(n_new)]
    for row in train + new:
        (tmp / row[1]).write_bytes(b"")  # the dry run only needs the files to exist
    write_csv(tmp / "manifest.csv", ["slide_id", "path", "case_id"], train)
    write_csv(tmp / "holdout.csv", ["slide_id", "path", "case_id"], new)
    (tmp / "genomics_table.csv").write_text("case_id\n")
    (tmp / "families.csv").write_text("A\n")


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
    _empty_cohort(tmp_path)  # 7 slides (4 cases) + 2 new slides
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


def _shell_commands(text: str, command: str) -> list[str]:
    """The `ghanet <command>` shell lines of a `snakemake -n -p` plan."""
    return [line for line in text.splitlines() if f" {command} " in line and "ghanet" in line]


def test_dry_run_passes_protocol_preset_and_stage_options_to_the_commands(tmp_path: Path) -> None:
    """protocol/preset reach preprocess-genomics, every train job and the report; the new per-stage keys reach
    their commands; keys left at the CLI default add nothing (existing outputs keep their command lines)."""
    _empty_cohort(tmp_path)
    cfg = workflow_config(tmp_path, folds=2, protocol="official", preset="tcga_ucec",
                          segment={"sat_threshold": 20, "min_tissue": 0.25}, extract={"precision": "fp32"})
    res = run_snakemake("-s", SNAKEFILE, "-n", "-p", "--configfile", str(cfg), cwd=tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    genomics, train = _shell_commands(text, "preprocess-genomics"), _shell_commands(text, "train")
    assert len(genomics) == 1 and len(train) == 3  # 2 fold jobs + the report
    assert all(" --protocol official --preset tcga_ucec " in c for c in genomics + train)
    assert "--de-method" not in genomics[0]  # the protocol/preset choose the method (here: none)
    assert all(" --sat-threshold 20 --min-tissue 0.25 " in c for c in _shell_commands(text, "segment"))
    assert all(" --precision fp32 " in c for c in _shell_commands(text, "extract-features"))

    default = run_snakemake("-s", SNAKEFILE, "-n", "-p", "--configfile",
                            str(workflow_config(tmp_path, tmp_path / "default.yaml", folds=2)), cwd=tmp_path)
    text = default.stdout + default.stderr
    assert default.returncode == 0, text
    assert not re.search(r"--(protocol|preset|precision|sat-threshold|min-tissue|de-method) ", text)


def test_dry_run_int8_calibrates_on_the_whole_manifest_and_writes_int8_bags(tmp_path: Path) -> None:
    """extract.precision int8: every per-slide job names the whole manifest as the int8 cohort (one model for
    the cohort), waits for every slide's coords, and the bags and training read <encoder_tag>_int8/."""
    _empty_cohort(tmp_path)
    cfg = workflow_config(tmp_path, folds=2, extract={"precision": "int8", "engine": "openvino", "int8_patches": 64})
    res = run_snakemake("-s", SNAKEFILE, "-n", "-p", "--configfile", str(cfg), cwd=tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    extract = _shell_commands(text, "extract-features")
    assert extract and all(" --precision int8 --engine openvino --int8-cohort " in c and " --int8-patches 64" in c
                           for c in extract)
    train = _shell_commands(text, "train")
    assert train and all("_int8 " in c or "_int8/" in c for c in train)


@pytest.mark.parametrize(("over", "named", "allowed"), [
    ({"protocol": "offical"}, "'protocol' is 'offical'", "ghanet, official"),
    ({"preset": "tcga_xyz"}, "'preset' is 'tcga_xyz'", "tcga_blca, tcga_brca, tcga_gbmlgg, tcga_luad, tcga_ucec"),
    ({"extract": {"precision": "fp8"}}, "'extract.precision' is 'fp8'", "auto, fp32, bf16, fp16"),
    ({"segment": {"min_tissue": 1.5}}, "'segment.min_tissue' is 1.5", "a number from 0 to 1"),
    ({"train": {"extra": "--protocol official"}}, "'train.extra' sets --protocol", "set the key 'protocol'"),
    ({"genomics": {"extra": "--de-method=none"}}, "'genomics.extra' sets --de-method", "'genomics.de_method'"),
])
def test_bad_config_value_fails_before_any_job_naming_the_key(tmp_path: Path, over: dict, named: str,
                                                              allowed: str) -> None:
    _empty_cohort(tmp_path)
    cfg = workflow_config(tmp_path, folds=2, **over)
    res = run_snakemake("-s", SNAKEFILE, "--cores", "1", "--configfile", str(cfg), cwd=tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode == 1  # Snakemake's exit code for a failed workflow
    assert f"config key {named}" in text and allowed in text, text[-3000:]
    assert not (tmp_path / "out").exists()  # no job ran


@dataclass
class WorkflowRun:
    """The end-to-end run shared by this module's tests (protocol ghanet, the defaults)."""

    cohort: Path
    out: Path
    result: subprocess.CompletedProcess
    hand_coords: Path
    hand_mtime: int


@pytest.fixture(scope="module")
def workflow_run(workflow_cohort: Path) -> WorkflowRun:
    """The tiny cohort through the whole workflow, after one slide was segmented by hand."""
    import pandas as pd

    tmp = workflow_cohort
    out = tmp / "out"
    cfg = workflow_config(tmp)
    first = pd.read_csv(tmp / "manifest.csv").iloc[0]
    # a slide segmented by hand before the workflow runs: the workflow must reuse it, not redo it
    ghanet = Path(sys.executable).parent / "ghanet"
    pre = subprocess.run([str(ghanet), "segment", str(tmp / first.path), "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, check=False)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    hand_coords = out / "segment" / f"{first.slide_id}.coords.h5"
    mtime = hand_coords.stat().st_mtime_ns
    # run in tmp: Snakemake's .snakemake/ state stays there
    res = run_snakemake("-s", SNAKEFILE, "--cores", "2", "--configfile", str(cfg), cwd=tmp)
    return WorkflowRun(tmp, out, res, hand_coords, mtime)


def test_workflow_runs_tiny_cohort_end_to_end_and_mixes_with_cli(workflow_run: WorkflowRun) -> None:
    res, tmp, out = workflow_run.result, workflow_run.cohort, workflow_run.out
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    assert workflow_run.hand_coords.stat().st_mtime_ns == workflow_run.hand_mtime  # hand-run output kept

    check_workflow_outputs(tmp, out)
    assert json.loads((out / "genomics" / "config.json").read_text())["protocol"] == "ghanet"
    assert json.loads((out / "train" / "wf" / "metrics.json").read_text())["protocol"] == "ghanet"

    again = run_snakemake("-s", SNAKEFILE, "--cores", "2", "--configfile", str(workflow_config(tmp)), "-n", cwd=tmp)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_workflow_protocol_official_is_refused_on_ghanet_outputs_and_recorded_in_a_new_out(
        workflow_run: WorkflowRun) -> None:
    """`protocol: official` on the finished ghanet outputs is refused before any job runs (naming the key and
    the recorded protocol); in a new `out` holding copies of the same grids and bags it runs only genomics,
    training and the report, and every output records the official protocol and its settings."""
    assert workflow_run.result.returncode == 0, workflow_run.result.stderr[-3000:]
    tmp, out = workflow_run.cohort, workflow_run.out
    genomics_cfg = (out / "genomics" / "config.json").read_bytes()

    same_out = workflow_config(tmp, tmp / "official-same-out.yaml", protocol="official")
    refused = run_snakemake("-s", SNAKEFILE, "--cores", "2", "--configfile", str(same_out), cwd=tmp)
    text = refused.stdout + refused.stderr
    assert refused.returncode == 1
    assert f"config key 'protocol' is 'official' but {out / 'genomics'} was made with protocol 'ghanet'" in text, \
        text[-3000:]
    assert (out / "genomics" / "config.json").read_bytes() == genomics_cfg  # nothing was rerun
    # the same for the other recorded settings the workflow sets (checked before Snakemake deletes outputs)
    for name, over, says in (
            ("de-method", {"genomics": {"de_method": "ttest"}},
             f"config key 'genomics.de_method' is 'ttest' but {out / 'genomics'} was made with de_method 'auto'"),
            ("epochs", {"train": {"epochs": 3}},
             f"config key 'train.epochs' is 3 but {out / 'train' / 'wf'} was made with epochs 2")):
        other = run_snakemake("-s", SNAKEFILE, "-n", "--configfile",
                              str(workflow_config(tmp, tmp / f"other-{name}.yaml", **over)), cwd=tmp)
        assert other.returncode == 1 and says in other.stdout + other.stderr, other.stderr[-3000:]

    out2 = tmp / "out-official"
    for sub in ("segment", "features"):  # copy2 keeps the mtimes: Snakemake sees finished grids and bags
        shutil.copytree(out / sub, out2 / sub)
    # preset tcga_ucec: no gene selection (12 cases give too few loader-drawn t-test groups) and lr 1e-4;
    # --topk 50: the official floor top-k needs 100/topk patches per bag and these bags have 3-5
    cfg = workflow_config(tmp, tmp / "official.yaml", out=str(out2), protocol="official", preset="tcga_ucec",
                          train={"extra": "--topk 50"})
    report = out2 / "train" / "wf" / "report" / "metrics.json"
    res = run_snakemake("-s", SNAKEFILE, str(report), "--cores", "2", "--configfile", str(cfg), cwd=tmp)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    stats = _job_stats(res.stdout + res.stderr)
    assert stats.get("segment", 0) == 0 and stats.get("extract_features", 0) == 0
    assert stats["preprocess_genomics"] == 1 and stats["train"] == 3 and stats["report"] == 1

    gen = json.loads((out2 / "genomics" / "config.json").read_text())
    assert (gen["protocol"], gen["preset"], gen["de_method"]) == ("official", "tcga_ucec", "none")
    assert (gen["config"]["bins_from"], gen["config"]["ttest_groups"]) == ("cohort", "loader")
    run_cfg = json.loads((out2 / "train" / "wf" / "config.json").read_text())
    assert (run_cfg["protocol"], run_cfg["preset"], run_cfg["genomics_protocol"]) == ("official", "tcga_ucec",
                                                                                      "official")
    assert (run_cfg["topk_rule"], run_cfg["accumulation"], run_cfg["select"]) == ("floor", "carry-over",
                                                                                 "best-epoch")
    assert (run_cfg["lr"], run_cfg["topk"]) == (1e-4, 0.5)  # the preset's lr; the explicit --topk wins
    metrics = json.loads((out2 / "train" / "wf" / "metrics.json").read_text())
    assert (metrics["protocol"], metrics["select"], metrics["optimistic"]) == ("official", "best-epoch", True)
    assert len(metrics["c_index_per_fold"]) == 3 and report.is_file()
