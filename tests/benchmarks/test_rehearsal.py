"""benchmarks/rehearsal.py's arithmetic: the disk it asks for, the GPU rate it reads from gpu_check.sh output,
the projection it prints, and the refusal to start without the disk the bags need."""

from __future__ import annotations

import argparse
import shutil
from collections import namedtuple
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def reh():
    from benchmarks import rehearsal

    return rehearsal


def test_disk_needed_is_the_bags_float32_features_and_coords(reh) -> None:
    per_bag = 10_000 * (1024 * 4 + 16)
    assert reh.disk_needed(516, 10_000) == int(516 * per_bag * 1.01)
    assert 20e9 < reh.disk_needed(516, 10_000) < 22e9   # "~21 GB for LUAD"


def test_gpu_rate_is_the_best_extract_line_of_gpu_check_output(reh, tmp_path: Path) -> None:
    log = tmp_path / "gpu.txt"
    log.write_text("reader-only supply: 90000 patches in 30.0 s = 3000 patches/s with 15 reader processes\n"
                   "batch 256: 33600 patches in 20.1 s (whole command, incl. start-up) = 1672 patches/s, GPU busy 91 %\n"
                   "batch 512: 33600 patches in 19.0 s (whole command, incl. start-up) = 1768 patches/s, GPU busy 95 %\n")
    assert reh.gpu_rate(log) == 1768.0                  # not the reader-only supply line
    assert reh.gpu_rate(tmp_path / "absent.txt") is None and reh.gpu_rate(None) is None


def test_projection_scales_the_measured_rates(reh) -> None:
    args = argparse.Namespace(project_slides=437, project_epochs=20, project_folds=5, patches=10_000)
    m = {"bag_bytes_mean": 41.2e6, "extract_rate": 25.0, "gpu_rate": 2000.0, "train_s_per_slide_epoch": 0.5,
         "segment_s_per_slide": 1.0}
    rows = dict(reh.projection(m, args))
    assert rows["bag size per 10,000 patches (1024 float32 features)"] == "41.2 MB"
    assert rows["bags of 437 slides x 10,000 patches"] == "18.0 GB"
    assert rows["extract-features, 4,370,000 patches, this CPU"].startswith("48.6 h")
    assert rows["extract-features, one GPU (gpu_check.sh: 2000 patches/s)"] == "0.61 h"
    assert rows["train, 5 folds x 20 epochs, this CPU (0.500 s per slide-epoch measured)"] == "6.1 h"


def test_refuses_to_start_without_the_disk_for_the_bags(reh, luad: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 10**9, 10**9))
    args = argparse.Namespace(table=luad / "tcga_luad_all_clean.csv.zip", families=str(luad / "signatures.csv"),
                              splits=None, work=tmp_path / "w", cases=None, patches=10_000, no_disk_check=False)
    with pytest.raises(SystemExit, match=r"not enough free disk .* need 21\.\d GB"):
        reh.run_rehearsal(args)
    assert not list((tmp_path / "w").iterdir())        # nothing written before the check


def test_record_holds_the_stage_and_projection_tables(reh, tmp_path: Path) -> None:
    from benchmarks.harness import read_records, render_block

    stages = [reh.Stage("layout (not a ghanet stage)", 16.6, note="15 slide files"), reh.Stage("train", 412.2, 2258.0)]
    proj = [("bags of 437 slides x 10,000 patches", "18.0 GB")]
    m = {"bag_bytes_mean": 42.1e6, "bags_bytes_total": 631e6, "work_bytes_total": 900e6}
    with reh.Bench("rehearsal", "t", {"cases": 10}, units={"seconds": "s", "peak_rss_mb": "MB"},
                   results=tmp_path) as bench:
        reh.fill_record(bench, stages, proj, m)
    [(path, rec)] = read_records(tmp_path)
    main = render_block(rec, "main", path)
    assert "| layout (not a ghanet stage) | 16.6 |  | 15 slide files |" in main and "| train | 412 | 2258 |" in main
    assert "42.1 MB per bag" in main
    assert "| bags of 437 slides x 10,000 patches | 18.0 GB |" in render_block(rec, "projection", path)
    assert rec["data"]["measured"] == m
