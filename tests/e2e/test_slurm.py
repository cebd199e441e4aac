"""The workflow on a real (throwaway, one-node) SLURM cluster with the SLURM profile.

Marked ``slurm``: it needs root (the daemons, /etc/slurm/slurm.conf) and Debian's slurm packages, which
pipelines/testing/slurm-up.sh installs with apt-get when they are missing. It skips, saying why, where the
cluster cannot be started (not root, no apt-get, another slurm.conf). Because it changes the machine
(packages, /etc/slurm/slurm.conf while it runs) it only runs when GHANET_SLURM_TEST=1:

    sudo make test-slurm        # = GHANET_SLURM_TEST=1 .venv/bin/python -m pytest -q -ra -m slurm

Every Snakemake job is submitted with sbatch (nothing runs locally) and must leave one COMPLETED record in
the controller's job completion log (jobcomp/filetxt), one per slide per stage and one per fold.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ghanet_pipeline.testing import check_workflow_outputs, run_snakemake, snakemake_path, workflow_config

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(not snakemake_path().exists(),
                                 reason="snakemake not installed (pip install '.[workflow]')")]

#: repository root (pipelines/Snakefile, pipelines/profiles/...)
REPO = Path(__file__).resolve().parents[2]
TESTING = REPO / "pipelines" / "testing"
# the test node: 2 CPUs, no GPUs, a few GiB for the jobs
MAX_CPUS, MAX_MEM_MB = 1, 1500


@pytest.fixture(scope="module")
def slurm_cluster() -> Path:
    """Start the one-node cluster (slurm-up.sh), yield its state folder, stop it by PID afterwards."""
    if os.environ.get("GHANET_SLURM_TEST") != "1":
        pytest.skip("opt-in: GHANET_SLURM_TEST=1 (installs and starts a SLURM cluster as root; `make test-slurm`)")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (daemons + /etc/slurm/slurm.conf)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("no SLURM installed and no apt-get to install it")
    up = subprocess.run(["bash", str(TESTING / "slurm-up.sh")], capture_output=True, text=True, timeout=900,
                        check=False)
    if up.returncode == 77:
        pytest.skip(up.stderr.strip().splitlines()[-1])
    assert up.returncode == 0, up.stdout + up.stderr
    state = Path(up.stdout.strip().splitlines()[-1])
    yield state
    subprocess.run(["bash", str(TESTING / "slurm-down.sh"), str(state), "--purge"], check=False, timeout=60)


def test_profile_for_this_cluster(tmp_path: Path) -> None:
    """The overlay keeps the real profile and only shrinks what the small node cannot give."""
    prof = yaml.safe_load((_cluster_profile(tmp_path) / "config.yaml").read_text())
    real = yaml.safe_load((REPO / "pipelines" / "profiles" / "slurm" / "config.yaml").read_text())
    assert prof["executor"] == "slurm" and prof["slurm-status-command"] == real["slurm-status-command"] == "squeue"
    assert prof["set-resources"]["extract_features"]["slurm_partition"] == "gpu"
    assert all(r["cpus_per_task"] <= MAX_CPUS and r["mem_mb"] <= MAX_MEM_MB for r in prof["set-resources"].values())


def _cluster_profile(tmp: Path) -> Path:
    """pipelines/profiles/slurm adapted to the test node (written to tmp/profile/config.yaml).

    Kept from the real profile: the executor, status command, partitions (the test cluster has `cpu` and
    `gpu` partitions on its one node), rerun/keep-going settings, per-rule runtimes.
    Changed: cpus_per_task/mem_mb capped to what the node has, threads 1, fast status polling and no
    retries (a failure must show), segment bundling off (one sbatch job per slide, to count them), SLURM
    logs kept (they map job ids to rules). GPUs: the test config sets `extract: gpu: 0`, so no job asks
    sbatch for a GPU (the node has none)."""
    prof = yaml.safe_load((REPO / "pipelines" / "profiles" / "slurm" / "config.yaml").read_text())
    for res in [prof["default-resources"], *prof["set-resources"].values()]:
        res["cpus_per_task"] = min(int(res.get("cpus_per_task", 1)), MAX_CPUS)
        res["mem_mb"] = min(int(res.get("mem_mb", MAX_MEM_MB)), MAX_MEM_MB)
    prof["set-threads"] = dict.fromkeys(prof.get("set-threads", {}), 1)
    prof.pop("snakefile", None)  # the test passes -s (it runs outside the repository)
    prof.pop("group-components", None)
    prof.update({"jobs": 4, "retries": 0, "latency-wait": 5, "slurm-init-seconds-before-status-checks": 3,
                 "slurm-keep-successful-logs": True})
    out = tmp / "profile"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return out


def _jobcomp(state: Path) -> dict[str, dict[str, str]]:
    """Job id -> fields of the controller's job completion records (jobcomp/filetxt)."""
    recs = {}
    for line in (state / "jobcomp.txt").read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        recs[fields["JobId"]] = fields
    return recs


def _slurm_jobs_by_target(workdir: Path) -> dict[str, list[str]]:
    """'rule:wildcards' (e.g. 'segment:slide=S1', 'train:fold=0', 'report:') -> SLURM job ids, read from the
    executor's per-job logs (.snakemake/slurm_logs/.../<jobid>.log: the job's Snakemake command line
    names its target jobs)."""
    jobs: dict[str, list[str]] = {}
    for log in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"):
        m = re.search(r"--target-jobs ((?:[A-Za-z_]\S* ?)+)", log.read_text())
        assert m, f"no --target-jobs in {log}"
        for target in m.group(1).split():
            jobs.setdefault(target, []).append(log.stem)
    return jobs


@pytest.mark.workflow
def test_workflow_on_slurm_cluster_submits_every_job_and_matches_local_outputs(
        slurm_cluster: Path, workflow_cohort: Path, tmp_path: Path) -> None:
    import pandas as pd

    state = slurm_cluster
    before = set(_jobcomp(state)) if (state / "jobcomp.txt").exists() else set()
    out = tmp_path / "out"
    cfg = workflow_config(workflow_cohort, tmp_path / "config.yaml", out=str(out))
    res = run_snakemake("-s", str(REPO / "pipelines" / "Snakefile"), "--profile", str(_cluster_profile(tmp_path)),
                        "--configfile", str(cfg), cwd=tmp_path, timeout=2400)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-8000:]

    check_workflow_outputs(workflow_cohort, out)

    slides = list(pd.read_csv(workflow_cohort / "manifest.csv").slide_id) + list(
        pd.read_csv(workflow_cohort / "holdout.csv").slide_id)
    by_rule = _slurm_jobs_by_target(tmp_path)
    expected = ({f"segment:slide={s}" for s in slides} | {f"extract_features:slide={s}" for s in slides}
                | {f"train:fold={k}" for k in range(3)} | {"preprocess_genomics:", "report:", "predict:"})
    assert set(by_rule) == expected, sorted(set(by_rule) ^ expected)
    assert all(len(ids) == 1 for ids in by_rule.values()), {k: v for k, v in by_rule.items() if len(v) != 1}

    # the controller saw exactly these jobs, each completed with exit code 0
    recs = {j: r for j, r in _jobcomp(state).items() if j not in before}
    submitted = {ids[0] for ids in by_rule.values()}
    assert set(recs) == submitted
    assert all(r["JobState"] == "COMPLETED" and r["ExitCode"] == "0:0" for r in recs.values())
    assert {r["Partition"] for j, r in recs.items() if j in by_rule[f"extract_features:slide={slides[0]}"]} == {"gpu"}
    assert len(recs) == 2 * len(slides) + 3 + 3
