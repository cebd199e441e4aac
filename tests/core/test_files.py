"""Safe file writing (core/files.py): atomic writes, stale temporary files of dead writers, SHA-256."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ghanet_pipeline.core.files import atomic_path, file_sha256, remove_stale_temps, write_json_atomic, write_text_atomic


def test_atomic_path_success_and_failure(tmp_path):
    final = tmp_path / "sub" / "f.txt"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
        tmp.write_text("new")
        assert not final.exists()  # only visible once complete
    assert final.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("boom")
    assert final.read_text() == "new"  # old content kept, no temp left behind
    assert [p.name for p in final.parent.iterdir()] == ["f.txt"]


def test_write_json_atomic(tmp_path):
    p = write_json_atomic(tmp_path / "a.json", {"path": Path("x/y"), "n": 3})
    assert json.loads(p.read_text()) == {"path": "x/y", "n": 3}
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "b.json", {"bad": math.nan})
    assert not (tmp_path / "b.json").exists()
    assert write_text_atomic(tmp_path / "c.txt", "é").read_text(encoding="utf-8") == "é"


def test_remove_stale_temps_and_sha256(tmp_path):
    (tmp_path / ".x.h5.abc.tmp").write_text("junk")
    (tmp_path / "keep.h5").write_bytes(b"data")
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.h5"]
    assert remove_stale_temps(tmp_path / "nope") == 0
    assert file_sha256(tmp_path / "keep.h5") == hashlib.sha256(b"data").hexdigest()



def test_remove_stale_temps_scoped_to_one_item_spares_other_jobs(tmp_path):
    """A job cleaning its own slide's leftovers must not delete another job's file in progress."""
    from ghanet_pipeline.core.files import atomic_path

    (tmp_path / ".A.h5.old1.tmp").write_text("killed run of A")
    (tmp_path / ".A.b.h5.x.tmp").write_text("slide 'A.b' being written by another job")
    with atomic_path(tmp_path / "B.h5") as other_job_tmp:
        other_job_tmp.write_text("in progress")
        assert remove_stale_temps(tmp_path, ["A.h5"]) == 1
        assert other_job_tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".A.b.h5.x.tmp", "B.h5"]


def test_remove_stale_temps_spares_a_live_writer_of_the_same_item(tmp_path):
    """Two processes writing the same output: cleaning up must not delete the other's temp file."""
    import os
    import subprocess
    import sys

    from ghanet_pipeline.core.files import _owner, atomic_path

    host = _owner().rsplit("-", 1)[0]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (tmp_path / f".A.h5.{host}-{live.pid}.k2j3h4.tmp").write_text("another process writing A.h5 now")
        (tmp_path / f".A.h5.{host}-{dead.pid}.a8d7f6.tmp").write_text("killed writer of A.h5")
        (tmp_path / ".A.h5.otherhost-1.zz11yy.tmp").write_text("a job on another node")
        with atomic_path(tmp_path / "A.h5") as mine:
            mine.write_text("mine")
            assert f"{host}-{os.getpid()}" in mine.name
            assert remove_stale_temps(tmp_path, ["A.h5"]) == 1  # only the dead writer's file
            assert mine.exists()
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted(["A.h5", f".A.h5.{host}-{live.pid}.k2j3h4.tmp", ".A.h5.otherhost-1.zz11yy.tmp"])
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temps(tmp_path, ["A.h5"]) == 1  # its writer is gone now


def test_stale_temps_of_live_processes_are_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        from ghanet_pipeline.core import files

        host = files._owner().rsplit("-", 1)[0]
        live = tmp_path / f".a.h5.{host}-{sleeper.pid}.x1.tmp"
        dead = tmp_path / f".a.h5.{host}-{2**22 + 12345}.x2.tmp"
        legacy = tmp_path / ".a.h5.abc123.tmp"
        for p in (live, dead, legacy):
            p.write_text("x")
        assert remove_stale_temps(tmp_path, ["a.h5"]) == 2
        assert live.exists() and not dead.exists() and not legacy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temps(tmp_path) == 1 and not live.exists()
    # an atomic write in progress is not removed by another job's cleanup
    with atomic_path(tmp_path / "b.json") as tmp:
        tmp.write_text("{}")
        assert remove_stale_temps(tmp_path) == 0 and tmp.exists()
    assert (tmp_path / "b.json").read_text() == "{}"
