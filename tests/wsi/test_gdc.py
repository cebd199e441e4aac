"""GDC downloads as gdc-client leaves them: only slides are found, the manifest's sizes and MD5s are checked
once (in parallel, remembered by size and mtime), a missing / truncated / damaged file fails alone; and the
``--slide-types`` filter (TCGA DX vs frozen TS/BS/MS)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.core.errors import ConfigError, ManifestError
from ghanet_pipeline.demo.gdcdownload import write_gdc_download
from ghanet_pipeline.wsi import gdc
from ghanet_pipeline.wsi.gather import GDC_CACHE, gather_slides
from ghanet_pipeline.wsi.inputs import collect_slides
from ghanet_pipeline.wsi.tcga import filter_slide_types, parse_slide_types, slide_type

NAMES = ["TCGA-2F-A9KO-01Z-00-DX1.195576CF-B739-4BD9-B15B-4A70AE287D3E.svs",
         "TCGA-2F-A9KO-01Z-00-DX2.0A1B2C3D-B739-4BD9-B15B-4A70AE287D3E.svs",
         "TCGA-2F-A9KP-01Z-00-DX1.11111111-2222-3333-4444-555555555555.svs",
         "TCGA-2F-A9KQ-01A-01-TS1.66666666-2222-3333-4444-555555555555.svs"]


def _fake_slide(path: Path, i: int) -> None:
    path.write_bytes(bytes([i]) * (1000 + 10 * i))  # content only matters for size and MD5 here


@pytest.fixture
def download(tmp_path: Path) -> Path:
    root = tmp_path / "dl"
    write_gdc_download(root, NAMES, _fake_slide)
    (root / next(root.iterdir()).name / "._hidden.svs").write_bytes(b"x")   # a macOS copy's resource fork
    return root


def _by_id(specs) -> dict:
    return {s.slide_id: s for s in specs}


def test_recursive_finds_the_slides_only_named_by_the_rule(download: Path) -> None:
    assert (download / "MANIFEST.txt").is_file() and list(download.glob("*/logs/*.parcel"))
    assert list(download.glob("*/annotations.txt"))
    specs = collect_slides([download], recursive=True)
    assert sorted(_by_id(specs)) == sorted(n.split(".")[0] for n in NAMES)
    assert all(not s.problem for s in specs)


def test_manifest_checked_once_in_parallel_and_remembered(download: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    calls: list[Path] = []
    real = gdc.file_md5
    monkeypatch.setattr(gdc, "file_md5", lambda p: calls.append(p) or real(p))
    specs = gather_slides([download], recursive=True, out=out)   # MANIFEST.txt at the top: found, used
    assert len(calls) == 4 and all(not s.problem for s in specs)
    cache = json.loads((out / GDC_CACHE).read_text())
    assert len(cache) == 4 and all(len(v["md5"]) == 32 for v in cache.values())
    calls.clear()
    gather_slides([download], recursive=True, out=out)
    assert calls == []                                            # remembered: nothing read again
    victim = next(download.glob(f"*/{NAMES[2]}"))
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    gather_slides([download], recursive=True, out=out)
    assert calls == [victim]                                      # a changed mtime: read again


def test_missing_truncated_and_damaged_downloads_fail_alone(download: Path, tmp_path: Path) -> None:
    truncated = next(download.glob(f"*/{NAMES[0]}"))
    truncated.write_bytes(truncated.read_bytes()[:100])
    damaged = next(download.glob(f"*/{NAMES[1]}"))
    data = bytearray(damaged.read_bytes())
    data[5] ^= 0xFF                                               # same size, other bytes
    damaged.write_bytes(bytes(data))
    missing = next(download.glob(f"*/{NAMES[2]}"))
    missing.unlink()
    specs = _by_id(gather_slides([download], recursive=True, out=tmp_path / "out"))
    assert len(specs) == 4                                        # the absent file is a slide that fails
    p0 = specs["TCGA-2F-A9KO-01Z-00-DX1"].problem
    assert "truncated or incomplete: 100 of 1,000 bytes" in p0 and str(truncated) in p0 and "row 2" in p0
    p1 = specs["TCGA-2F-A9KO-01Z-00-DX2"].problem
    assert "damaged: its MD5" in p1 and "column md5" in p1 and "gdc-client download -m MANIFEST.txt" in p1
    p2 = specs["TCGA-2F-A9KP-01Z-00-DX1"].problem
    assert "is missing (manifest row 4" in p2 and str(missing) in p2
    assert specs["TCGA-2F-A9KQ-01A-01-TS1"].problem == ""


def test_segment_reports_a_damaged_download_as_a_failed_slide_and_goes_on(tmp_path: Path, make_synthetic_slide
                                                                          ) -> None:
    """The CLI: exit 1, the damaged file named; the good slides are segmented (run log has every slide)."""
    src = make_synthetic_slide("gdc-good.svs", 1024, 1024, mpp=0.5, seed=3)
    root = tmp_path / "dl"
    write_gdc_download(root, NAMES[:2], lambda p, i: p.write_bytes(src.read_bytes()))
    bad = next(root.glob(f"*/{NAMES[1]}"))
    bad.write_bytes(bad.read_bytes()[:-1000])
    res = CliRunner().invoke(cli, ["segment", str(root), "--recursive", "--out", str(tmp_path / "out"),
                                   "--no-progress"])
    assert res.exit_code == 1, res.output
    assert (tmp_path / "out/segment/TCGA-2F-A9KO-01Z-00-DX1.coords.h5").is_file()
    assert not (tmp_path / "out/segment/TCGA-2F-A9KO-01Z-00-DX2.coords.h5").exists()
    log = json.loads(next((tmp_path / "out/logs").glob("segment-*.json")).read_text())
    items = {i["item"]: i for i in log["items"]}
    assert items["TCGA-2F-A9KO-01Z-00-DX1"]["status"] == "done"
    assert items["TCGA-2F-A9KO-01Z-00-DX2"]["status"] == "failed"
    assert "truncated or incomplete" in items["TCGA-2F-A9KO-01Z-00-DX2"]["message"]


def test_explicit_gdc_manifest_checks_the_slides_given(download: Path, tmp_path: Path) -> None:
    one = next(download.glob(f"*/{NAMES[3]}"))
    one.write_bytes(b"")
    specs = gather_slides([one], gdc_manifest=download / "MANIFEST.txt")   # one file given, manifest named
    assert len(specs) == 1 and "0 of 1,030 bytes" in specs[0].problem


@pytest.mark.parametrize(("text", "match"), [
    ("id\tfilename\tsize\n", r"no column\(s\) md5"),
    ("id\tfilename\tmd5\tsize\tstate\nabc\tx.svs\tnot-a-digest\t12\treleased\n", "row 2, column md5"),
    ("id\tfilename\tmd5\tsize\tstate\nabc\t../x.svs\t" + "0" * 32 + "\t12\treleased\n", "row 2, column filename"),
    ("id\tfilename\tmd5\tsize\tstate\nabc\tx.svs\t" + "0" * 32 + "\t1.5\treleased\n", "row 2, column size"),
])
def test_bad_gdc_manifest_rows_are_named(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "MANIFEST.txt").write_text(text)
    with pytest.raises(ManifestError, match=match):
        gdc.read_gdc_manifest(tmp_path / "MANIFEST.txt")


def test_slide_types_from_the_barcode_and_cases_left_without_slides(caplog: pytest.LogCaptureFixture) -> None:
    assert [slide_type(n.split(".")[0]) for n in NAMES] == ["DX", "DX", "DX", "TS"]
    assert slide_type("TCGA-05-4244-01A-01-BS1") == "BS" and slide_type("scan_001") is None
    assert parse_slide_types("dx, TS") == ("DX", "TS") and parse_slide_types(None) is None
    with pytest.raises(ConfigError, match="FF: not a TCGA slide type"):
        parse_slide_types("DX,FF")
    ids = [n.split(".")[0] for n in NAMES] + ["scan_001"]
    kept, rep = filter_slide_types(ids, ("DX",), lambda s: s, lambda s: s[:12])
    assert kept == ids[:3] + ["scan_001"]
    assert rep.left_out == {"TS": ["TCGA-2F-A9KQ-01A-01-TS1"]} and rep.not_tcga == ["scan_001"]
    assert rep.emptied_cases == {"TCGA-2F-A9KQ": ["TCGA-2F-A9KQ-01A-01-TS1 (TS)"]}
    assert "case TCGA-2F-A9KQ has no DX slide (only TCGA-2F-A9KQ-01A-01-TS1 (TS)) and is left out" in caplog.text


def test_slide_types_dx_leaves_a_frozen_only_case_out_of_every_stage(download: Path, tmp_path: Path) -> None:
    specs = gather_slides([download], recursive=True, out=tmp_path / "out", slide_types="DX")
    assert sorted(s.case_id for s in specs) == ["TCGA-2F-A9KO-01Z-00-DX1", "TCGA-2F-A9KO-01Z-00-DX2",
                                                "TCGA-2F-A9KP-01Z-00-DX1"]
    res = CliRunner().invoke(cli, ["segment", str(download), "--recursive", "--slide-types", "XX",
                                   "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "not a TCGA slide type" in res.output
