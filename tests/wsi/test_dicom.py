"""DICOM WSI: a folder of instances is one slide; coords and features equal the source slide's; clear errors.

The DICOM folders are made here from a synthetic slide and from the real test slide (skipped when
absent) by ``write_dicom_wsi``: every pyramid level as OpenSlide decodes it, stored losslessly
(uncompressed frames, or RLE frames that OpenSlide cannot decode and wsidicom reads), plus label,
overview and thumbnail instances. Pixels are therefore identical, so coords and features must be equal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.core.errors import SlideError
from ghanet_pipeline.wsi.dicom_writer import write_dicom_wsi
from ghanet_pipeline.wsi.inputs import collect_slides
from ghanet_pipeline.wsi.slide import Slide


@pytest.fixture(scope="module")
def dicom_slides(tmp_path_factory, make_synthetic_slide):
    src = make_synthetic_slide("dcm_src.svs", 2600, 1800, mpp=0.25, seed=5)
    root = tmp_path_factory.mktemp("dicom")
    plain = write_dicom_wsi(src, root / "archive" / "case1" / "slideA")
    rle = write_dicom_wsi(src, root / "archive" / "case2" / "slideR", rle=True)
    return src, plain, rle


def test_folder_is_one_slide_named_after_it(dicom_slides, tmp_path):
    src, plain, rle = dicom_slides
    assert sorted(p.name for p in plain.iterdir()) == ["label.dcm", "level0.dcm", "level1.dcm", "overview.dcm",
                                                       "thumbnail.dcm"]
    for given in ([plain], [plain / "level1.dcm"], [plain / "label.dcm"], [plain / "level0.dcm", plain / "label.dcm"]):
        specs = collect_slides(given)
        assert [s.slide_id for s in specs] == ["slideA"], given
    # a manifest names it otherwise; its path may be the folder or one instance file
    man = tmp_path / "manifest.csv"
    man.write_text(f"slide_id,path,case_id\nTCGA-AA-0001-01Z,{plain},c1\nother,{rle / 'thumbnail.dcm'},c2\n")
    specs = collect_slides(manifest=man)
    assert [(s.slide_id, s.case_id) for s in specs] == [("TCGA-AA-0001-01Z", "c1"), ("other", "c2")]
    with Slide(specs[1].path, slide_id="other") as s:
        assert s.dimensions == (2600, 1800) and s.reader == "wsidicom"
    # recursive discovery: one slide per DICOM folder, next to an ordinary slide file
    shutil.copy(src, plain.parents[1] / "plain.svs")
    specs = collect_slides([plain.parents[1]], recursive=True)
    assert sorted(s.slide_id for s in specs) == ["plain", "slideA", "slideR"]
    # an ending-less instance file (as archives ship them) counts too
    bare = tmp_path / "slideB"
    shutil.copytree(plain, bare)
    for f in bare.iterdir():
        f.rename(f.with_suffix(""))
    assert [s.slide_id for s in collect_slides([tmp_path], recursive=True)] == ["slideB"]


@pytest.mark.parametrize("which", ["plain", "rle"])
def test_dicom_reads_like_the_source(dicom_slides, which):
    src, plain, rle = dicom_slides
    folder = plain if which == "plain" else rle
    with Slide(src) as a, Slide(folder) as b:
        assert b.reader == ("openslide" if which == "plain" else "wsidicom")  # OpenSlide has no RLE decoder
        assert (b.dimensions, b.level_downsamples) == (a.dimensions, a.level_downsamples)
        assert b.mpp == pytest.approx(a.mpp) and b.slide_id == folder.name
        for target in (0.25, 0.5, 1.0):
            pa, pb = a.plan(target, 256), b.plan(target, 256)
            assert pa == pb
            for x, y in ((0, 0), (1024, 512), (2600 - 300, 1800 - 300)):
                np.testing.assert_array_equal(a.read_patch(pa, x, y), b.read_patch(pb, x, y))
        np.testing.assert_array_equal(a.thumbnail(32)[0], b.thumbnail(32)[0])


def test_segment_and_extract_equal_the_source(dicom_slides, tmp_path):
    src, plain, rle = dicom_slides
    run = CliRunner()
    common = ["--no-progress"]
    for name, path in (("src", src), ("dcm", plain), ("rle", rle)):
        res = run.invoke(cli, ["segment", str(path), "--out", str(tmp_path / name)] + common)
        assert res.exit_code == 0, res.output
        res = run.invoke(cli, ["extract-features", str(path), "--out", str(tmp_path / name), "--weights", "random:1",
                               "--batch-size", "16", "--num-workers", "0", "--devices", "cpu"] + common)
        assert res.exit_code == 0, res.output
    coords = {}
    feats = {}
    for name, sid in (("src", src.name.split(".")[0]), ("dcm", "slideA"), ("rle", "slideR")):
        assert len(list((tmp_path / name / "segment").glob("*.coords.h5"))) == 1  # one slide, not one per instance
        with h5py.File(tmp_path / name / "segment" / f"{sid}.coords.h5", "r") as f:
            coords[name] = f["coords"][()]
        bag = next((tmp_path / name / "features").glob(f"*/{sid}.h5"))
        with h5py.File(bag, "r") as f:
            feats[name] = f["features"][()]
    assert len(coords["src"]) >= 5
    for name in ("dcm", "rle"):
        np.testing.assert_array_equal(coords[name], coords["src"])
        np.testing.assert_array_equal(feats[name], feats["src"])  # identical pixels -> identical features


def _mutate(folder: Path, dst: Path, fn) -> Path:
    shutil.copytree(folder, dst)
    for f in dst.glob("level*.dcm"):
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)
    return dst


def test_non_conformant_dicom_says_what_is_missing(dicom_slides, tmp_path):
    _, plain, _ = dicom_slides

    def strip(ds):
        del ds.ImageType
        del ds.SharedFunctionalGroupsSequence

    bad = _mutate(plain, tmp_path / "noattrs", strip)
    with pytest.raises(SlideError) as err:
        Slide(bad)
    msg = str(err.value)
    assert "not a format we read" in msg and "ImageType" in msg and "PixelSpacing" in msg
    assert "damaged" not in msg and "wsidicomizer" in msg and "intact" in msg

    def ct(ds):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID

    other = tmp_path / "ct"
    other.mkdir()
    shutil.copy(plain / "level0.dcm", other / "level0.dcm")
    _mutate(other, tmp_path / "ct2", ct)
    res = CliRunner().invoke(cli, ["segment", str(tmp_path / "ct2"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 1 and "failed" in res.output, res.output
    # the message in the run log (the terminal table wraps it at the width of the temporary paths)
    (log,) = (tmp_path / "o" / "logs").glob("segment-*.json")
    (item,) = json.loads(log.read_text())["items"]
    assert "CT Image" in item["message"] and "not a VL Whole Slide" in item["message"]
    assert "damaged" not in item["message"]


def test_truncated_dicom_is_damaged(dicom_slides, tmp_path):
    """A file cut in its header or in its pixel data is 'truncated', not 'not a format we read'."""
    _, plain, rle = dicom_slides
    for src, cut in ((plain, 600), (plain, None), (rle, None)):
        bad = tmp_path / f"trunc_{src.name}_{cut}"
        shutil.copytree(src, bad)
        data = (bad / "level0.dcm").read_bytes()
        (bad / "level0.dcm").write_bytes(data[: cut or len(data) - 1000])
        with pytest.raises(SlideError) as err:
            Slide(bad)
        assert "truncated" in str(err.value) and "level0.dcm" in str(err.value)
        assert "not a format" not in str(err.value)


def test_unreadable_frame_names_the_position(dicom_slides, tmp_path):
    """A corrupt RLE frame (read by wsidicom) fails the read naming the level-0 position, never white."""
    _, _, rle = dicom_slides
    bad = tmp_path / "badframe"
    shutil.copytree(rle, bad)
    ds = pydicom.dcmread(bad / "level0.dcm")
    from pydicom.encaps import encapsulate, generate_frames

    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    frames[0] = b"\x00" * 8  # an RLE header claiming no segments
    ds.PixelData = encapsulate(frames)
    ds.save_as(bad / "level0.dcm")
    with Slide(bad) as s, pytest.raises(SlideError) as err:
        s.read_region(10, 20, 0, (64, 64))
    assert "(x=10, y=20)" in str(err.value)


def test_doctor_lists_the_readers(tmp_path):
    res = CliRunner().invoke(cli, ["doctor", "--out", str(tmp_path)], env={"COLUMNS": "250"})
    assert "slide readers" in res.output and "wsidicom" in res.output and "DICOM" in res.output


def test_real_slide_as_dicom_gives_the_same_coords(real_slide, tmp_path):
    REAL = real_slide
    folder = write_dicom_wsi(REAL, tmp_path / "CMU-1-Small-Region-dicom")
    run = CliRunner()
    for name, path in (("svs", REAL), ("dcm", folder)):
        res = run.invoke(cli, ["segment", str(path), "--out", str(tmp_path / name), "--no-progress"])
        assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "svs" / "segment" / "CMU-1-Small-Region.coords.h5", "r") as a, \
            h5py.File(tmp_path / "dcm" / "segment" / "CMU-1-Small-Region-dicom.coords.h5", "r") as b:
        assert len(a["coords"]) > 20
        np.testing.assert_array_equal(a["coords"][()], b["coords"][()])
        ca = a["coords"][()]
    with Slide(REAL) as s, Slide(folder) as d:
        plan = s.plan(0.5, 256)
        for x, y in ca[:: max(1, len(ca) // 8)]:
            np.testing.assert_array_equal(s.read_patch(plan, x, y), d.read_patch(plan, x, y))


@pytest.mark.slow
def test_real_slide_as_dicom_gives_the_same_features(real_slide, tmp_path):
    REAL = real_slide
    folder = write_dicom_wsi(REAL, tmp_path / "CMU-1-Small-Region-dicom")
    run = CliRunner()
    out = {}
    for name, path in (("svs", REAL), ("dcm", folder)):
        res = run.invoke(cli, ["extract-features", str(path), "--out", str(tmp_path / name), "--weights", "random:1",
                               "--num-workers", "0", "--devices", "cpu", "--no-progress"])
        assert res.exit_code == 0, res.output
        with h5py.File(next((tmp_path / name / "features").glob("*/*.h5")), "r") as f:
            out[name] = f["features"][()]
    np.testing.assert_array_equal(out["svs"], out["dcm"])
