"""extract-features: bags from a tiny synthetic slide (random weights, 64 px encoder input to stay fast)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ghanet_pipeline.core.errors import ConfigError, MismatchError
from ghanet_pipeline.core.runs import exit_code
from ghanet_pipeline.features.bags import read_bag, validate_bag
from ghanet_pipeline.features.extract import Extractor, ExtractParams, extract_slides
from ghanet_pipeline.wsi.inputs import SlideSpec
from ghanet_pipeline.wsi.segment import SegmentParams, load_coords, segment_paths, segment_slide

SMALL = 64  # encoder input side for most tests (the path and bag logic do not depend on it)


@pytest.fixture(scope="module")
def small_slide(make_synthetic_slide) -> Path:
    """1280 x 1024 px at 0.5 um/px: 9 tissue patches of 256 px with the default segment settings."""
    return make_synthetic_slide("extract_small.svs", 1280, 1024, mpp=0.5, phenotype=0.3, seed=5)


@pytest.fixture(scope="module")
def params() -> ExtractParams:
    # fp32 explicitly: on a CPU with AMX "auto" would be bf16, and these tests compare against fp32 numbers
    return ExtractParams(weights="random", input_size=SMALL, batch_size=4, num_workers=1, device="cpu",
                         precision="fp32", torch_threads=1)


@pytest.fixture(scope="module")
def extractor(params) -> Extractor:
    return Extractor(params)


def _spec(path: Path, sid: str = "s1") -> SlideSpec:
    return SlideSpec(slide_id=sid, path=path, case_id=sid)


def _bag_path(out: Path, sid: str = "s1", size: int = SMALL) -> Path:
    return out / "features" / f"resnet50_trunc_{size}_random0" / f"{sid}.h5"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_slide, extractor):
    """One uninterrupted run: (out dir, bag) used as the reference by several tests."""
    out = tmp_path_factory.mktemp("ref")
    seg = segment_slide(_spec(small_slide), out, SegmentParams())
    assert seg.status == "done"
    res = extractor.extract(_spec(small_slide), out)
    assert res.status == "done", res.message
    return out, read_bag(res.metrics["bag"])


def test_bag_schema_attrs_and_coords_equal_segment(reference, small_slide):
    out, bag = reference
    coords, cattrs = load_coords(segment_paths(out, "s1")["coords"])
    assert len(coords) == 9
    assert bag.path == _bag_path(out) and validate_bag(bag.path) == []
    np.testing.assert_array_equal(bag.coords, coords)  # same patches, same order
    assert bag.features.shape == (9, 1024) and bag.features.dtype == np.float32
    assert np.isfinite(bag.features).all() and bag.features.std(axis=0).mean() > 0
    # distinct patches give distinct features (no patch was silently replaced / duplicated)
    assert len({row.tobytes() for row in bag.features}) == 9
    a = bag.attrs
    assert a["encoder"] == "resnet50_trunc" and a["weights_sha256"] == "random:0" and a["input_size"] == SMALL
    for k in ("target_mpp", "patch_size", "patch_size_level0", "level0_mpp", "source_name", "source_bytes"):
        assert a[k] == cattrs[k], k
    assert a["source_bytes"] == small_slide.stat().st_size and a["complete"] is True
    assert a["precision"] == "fp32" and a["dtype"] == "float32" and a["schema_version"] == 1
    # the segmentation settings travel with the bag (training records them for predict)
    seg = json.loads(a["segment_params"])
    assert seg["sat_threshold"] == cattrs["sat_threshold"] and seg["min_tissue"] == cattrs["min_tissue"]
    assert seg["min_tissue_area_um2"] == cattrs["min_tissue_area_um2"] and "qc_max_side" not in seg
    with h5py.File(bag.path) as h5:
        assert h5["features"].chunks[0] == 9  # one block of rows, not one row per chunk


def test_features_match_direct_encoder_call(reference, small_slide, extractor):
    """The data path (workers, batching, uint8 transport, device normalisation) equals a plain loop."""
    import cv2

    from ghanet_pipeline.features.encoders import preprocess
    from ghanet_pipeline.wsi.slide import Slide

    _, bag = reference
    with Slide(small_slide) as s:
        plan = s.plan(0.5, 256)
        patches = [cv2.resize(s.read_patch(plan, x, y), (SMALL, SMALL), interpolation=cv2.INTER_AREA)
                   for x, y in bag.coords[:4]]
    x = torch.from_numpy(np.stack(patches))
    with torch.inference_mode():
        direct = extractor.model(preprocess(x, extractor.encoder.spec)).numpy()
    np.testing.assert_allclose(bag.features[:4], direct, rtol=1e-4, atol=1e-4)


def test_rerun_is_deterministic_and_independent_of_workers(reference, small_slide, extractor, params, tmp_path):
    out_ref, bag = reference
    shutil.copytree(out_ref / "segment", tmp_path / "segment")
    res = Extractor(params.__class__(**{**params.__dict__, "num_workers": 0}),
                    encoder=extractor.encoder).extract(_spec(small_slide), tmp_path)
    assert res.status == "done"
    again = read_bag(res.metrics["bag"])
    np.testing.assert_array_equal(again.features, bag.features)
    assert again.path.read_bytes() == bag.path.read_bytes()  # byte-identical files


def test_skip_valid_bag_refuse_other_settings_overwrite(reference, small_slide, extractor, tmp_path):
    out_ref, bag = reference
    shutil.copytree(out_ref, tmp_path / "o")
    out = tmp_path / "o"
    assert extractor.extract(_spec(small_slide), out).status == "skipped"
    path = _bag_path(out)
    with h5py.File(path, "r+") as h5:
        h5.attrs["weights_sha256"] = "random:9"  # as if made with other weights
    with pytest.raises(MismatchError, match="weights_sha256='random:9'.*--overwrite"):
        extractor.extract(_spec(small_slide), out)
    res = extractor.extract(_spec(small_slide), out, overwrite=True)
    assert res.status == "done" and read_bag(path).attrs["weights_sha256"] == "random:0"


def test_explicit_precision_other_than_the_bags_is_refused_auto_reuses(reference, small_slide, extractor, params,
                                                                       tmp_path, monkeypatch):
    """An fp32 bag exists: --precision bf16 is refused (nothing written), auto (here resolving to bf16) reuses it."""
    from ghanet_pipeline.env import runtime

    out_ref, _ = reference
    shutil.copytree(out_ref, tmp_path / "o")
    out, path = tmp_path / "o", _bag_path(tmp_path / "o")
    before = path.read_bytes()
    bf16 = Extractor(params.__class__(**{**params.__dict__, "precision": "bf16"}), encoder=extractor.encoder)
    with pytest.raises(MismatchError, match=r"precision='fp32' \(now 'bf16', asked for with --precision\)"):
        bf16.extract(_spec(small_slide), out)
    assert path.read_bytes() == before
    monkeypatch.setattr(runtime, "auto_cpu_precision", lambda info=None: ("bf16", "auto: faked AMX-BF16"))
    auto = Extractor(params.__class__(**{**params.__dict__, "precision": "auto"}), encoder=extractor.encoder)
    assert auto.precision == "bf16"
    res = auto.extract(_spec(small_slide), out)
    assert res.status == "skipped" and res.metrics["precision"] == "fp32" and path.read_bytes() == before


def test_resume_after_simulated_crash(reference, small_slide, extractor, params, tmp_path):
    out_ref, bag = reference
    out = tmp_path / "o"
    shutil.copytree(out_ref / "segment", out / "segment")
    folder = _bag_path(out).parent
    folder.mkdir(parents=True)
    (folder / ".s1.h5.k1ll3d.tmp").write_bytes(b"half a bag")  # temp file of a killed run
    shutil.copy(bag.path, folder / "s1.h5")
    with h5py.File(folder / "s1.h5", "r+") as h5:  # a bag whose writer never set complete
        h5.attrs["complete"] = False
        h5["features"][3:] = 0
    results = extract_slides([_spec(small_slide)], out, params, overwrite=False)
    assert [r.status for r in results] == ["done"]
    assert sorted(p.name for p in folder.iterdir()) == ["s1.h5"]
    np.testing.assert_array_equal(read_bag(folder / "s1.h5").features, bag.features)


def test_missing_coords_runs_segment_first(small_slide, extractor, reference, tmp_path):
    _, bag = reference
    res = extractor.extract(_spec(small_slide), tmp_path)
    assert res.status == "done" and "segment" in res.message
    coords, _ = load_coords(segment_paths(tmp_path, "s1")["coords"])
    np.testing.assert_array_equal(read_bag(res.metrics["bag"]).coords, coords)


def test_coords_of_another_slide_file_are_refused(reference, small_slide, extractor, tmp_path):
    """Coords made from another file under the same slide_id (slide replaced, or same name in another
    folder) are never used to embed this one: the slide fails naming both files and the fix."""
    out_ref, _ = reference
    out = tmp_path / "o"
    shutil.copytree(out_ref / "segment", out / "segment")
    changed = tmp_path / "other" / small_slide.name
    changed.parent.mkdir()
    changed.write_bytes(small_slide.read_bytes() + b"\0" * 16)  # same name, another size
    renamed = tmp_path / "renamed.svs"
    shutil.copy(small_slide, renamed)  # same size, another name
    for path in (changed, renamed):
        with pytest.raises(MismatchError) as err:
            extractor.extract(_spec(path), out)
        msg = str(err.value)
        assert "s1.coords.h5" in msg and str(path) in msg and "ghanet segment --overwrite" in msg
    assert not _bag_path(out).exists()
    assert extractor.extract(_spec(small_slide), out).status == "done"  # the slide the coords belong to


def test_corrupt_tile_fails_that_slide_naming_its_coordinates(small_slide, params, reference, tmp_path):
    """A damaged JPEG tile: the slide fails with the patch's level-0 x/y; the other slide still runs."""
    import tifffile

    out_ref, bag = reference
    bad = tmp_path / "bad.svs"
    shutil.copy(small_slide, bad)
    out = tmp_path / "o"
    for sid in ("bad", "s1"):
        (out / "segment").mkdir(parents=True, exist_ok=True)
        for ext in (".coords.h5", ".geojson", ".png"):
            shutil.copy(out_ref / "segment" / f"s1{ext}", out / "segment" / f"{sid}{ext}")
    with h5py.File(out / "segment" / "bad.coords.h5", "r+") as h5:
        h5.attrs["slide_id"] = "bad"
        h5.attrs["source_name"] = "bad.svs"
    x0, y0 = (int(v) for v in bag.coords[5])  # corrupt the level-0 tile under the 6th patch's top-left
    with tifffile.TiffFile(bad) as tif:
        page = tif.pages[0]
        tiles_across = -(-page.imagewidth // page.tilewidth)
        k = (y0 // page.tilelength) * tiles_across + (x0 // page.tilewidth)
        offset, nbytes = page.dataoffsets[k], page.databytecounts[k]
    with open(bad, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * min(nbytes, 64))
    # patches overlapping that tile, in coords order: the first of them is the one that fails
    ts = 256
    tx, ty = (x0 // ts) * ts, (y0 // ts) * ts
    hits = [(int(x), int(y)) for x, y in bag.coords if x < tx + ts and x + 256 > tx and y < ty + ts and y + 256 > ty]
    results = extract_slides([_spec(bad, "bad"), _spec(small_slide, "s1")], out, params)
    by = {r.item: r for r in results}
    assert by["bad"].status == "failed" and by["s1"].status == "done" and exit_code(results) == 1
    assert f"(x={hits[0][0]}, y={hits[0][1]})" in by["bad"].message and "level-0" in by["bad"].message
    assert not _bag_path(out, "bad").exists()
    assert not list(_bag_path(out, "bad").parent.glob(".*.tmp"))


def test_bf16_precision_and_float16_storage(reference, small_slide, extractor, params, tmp_path):
    out_ref, bag = reference
    shutil.copytree(out_ref / "segment", tmp_path / "segment")
    p = params.__class__(**{**params.__dict__, "precision": "bf16", "dtype": "float16"})
    res = Extractor(p, encoder=extractor.encoder).extract(_spec(small_slide), tmp_path)
    with h5py.File(res.metrics["bag"]) as h5:
        assert h5["features"].dtype == np.float16
        assert h5.attrs["precision"] == "bf16" and h5.attrs["dtype"] == "float16"
    half = read_bag(res.metrics["bag"]).features
    rel = np.abs(half - bag.features).max() / np.abs(bag.features).max()
    assert rel < 0.05  # bf16 rounding, not different features
    with pytest.raises(ConfigError, match="fp16 is for CUDA"):
        Extractor(params.__class__(**{**params.__dict__, "precision": "fp16"}), encoder=extractor.encoder)


@pytest.mark.slow  # starts Python processes (each imports torch)
def test_devices_pull_from_one_queue(reference, small_slide, params, tmp_path):
    """--devices cpu,cpu: two spawned processes share the slides; bags equal the single-process ones."""
    out_ref, bag = reference
    out = tmp_path / "o"
    specs = [_spec(small_slide, f"s{i}") for i in range(3)]  # 3 slides, 2 processes
    results = extract_slides(specs, out, params, devices=["cpu", "cpu"])
    assert [r.item for r in results] == ["s0", "s1", "s2"] and all(r.status == "done" for r in results)
    assert {r.metrics["device"] for r in results} <= {"cpu"}
    for s in specs:
        np.testing.assert_array_equal(read_bag(_bag_path(out, s.slide_id)).features, bag.features)


def test_cli_extract_and_weights_missing_message(small_slide, reference, tmp_path, monkeypatch):
    from ghanet_pipeline.cli import cli

    out_ref, bag = reference
    out = tmp_path / "o"
    shutil.copytree(out_ref / "segment", out / "segment")
    (out / "segment" / "s1.coords.h5").rename(out / "segment" / "extract_small.coords.h5")
    with h5py.File(out / "segment" / "extract_small.coords.h5", "r+") as h5:
        h5.attrs["slide_id"] = "extract_small"
    runner = CliRunner()
    args = ["extract-features", str(small_slide), "--out", str(out), "--resize", str(SMALL), "--device", "cpu",
            "--batch-size", "4", "--num-workers", "0", "--no-progress", "--precision", "fp32"]
    r = runner.invoke(cli, args + ["--weights", "random"])
    assert r.exit_code == 0, r.output
    got = read_bag(_bag_path(out, "extract_small"))
    np.testing.assert_array_equal(got.features, bag.features)
    assert list((out / "logs").glob("extract-features-*.json"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    r = runner.invoke(cli, args)
    assert r.exit_code == 2
    assert "no weights for encoder 'resnet50_trunc'" in r.output and "--weights" in r.output


def test_real_slide_bag_coords_equal_segment(real_slide, extractor, tmp_path):
    spec = _spec(real_slide, "CMU-1-Small-Region")
    res = extractor.extract(spec, tmp_path)
    assert res.status == "done", res.message
    coords, cattrs = load_coords(segment_paths(tmp_path, spec.slide_id)["coords"])
    bag = read_bag(res.metrics["bag"])
    assert len(coords) > 20
    np.testing.assert_array_equal(bag.coords, coords)
    assert np.isfinite(bag.features).all() and bag.attrs["level0_mpp"] == pytest.approx(0.499, abs=1e-3)


def test_devices_usage_errors_are_raised_before_any_process_starts(small_slide, params, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    no_weights = params.__class__(**{**params.__dict__, "weights": None})
    with pytest.raises(ConfigError, match="no weights for encoder"):
        extract_slides([_spec(small_slide)], tmp_path, no_weights, devices=["cpu", "cpu"])
    with pytest.raises(ConfigError, match="--device"):
        extract_slides([_spec(small_slide)], tmp_path, params, devices=["cpu", "tpu:0"])


@pytest.mark.parametrize(("flags", "auto"), [({"amx_tile", "amx_bf16", "avx512_bf16"}, "bf16"),
                                             ({"avx512_bf16"}, "fp32"), (set(), "fp32")])
def test_cli_precision_auto_follows_cpu_flags_and_fp32_is_honoured(small_slide, reference, tmp_path, monkeypatch,
                                                                   flags, auto):
    """Faked CPU flags: no --precision -> the rule's choice (bag attr, summary table); --precision fp32 -> fp32."""
    from ghanet_pipeline.cli import cli
    from ghanet_pipeline.env import runtime

    monkeypatch.setattr(runtime, "cpu_info", lambda: runtime.CpuInfo("Fake CPU", frozenset(flags)))
    out_ref, bag = reference
    for extra, want in (([], auto), (["--precision", "fp32"], "fp32")):
        out = tmp_path / f"o{len(extra)}"
        shutil.copytree(out_ref / "segment", out / "segment")
        (out / "segment" / "s1.coords.h5").rename(out / "segment" / "extract_small.coords.h5")
        with h5py.File(out / "segment" / "extract_small.coords.h5", "r+") as h5:
            h5.attrs["slide_id"] = "extract_small"
        r = CliRunner().invoke(cli, ["extract-features", str(small_slide), "--out", str(out), "--resize", str(SMALL),
                                     "--device", "cpu", "--batch-size", "4", "--num-workers", "0", "--no-progress",
                                     "--weights", "random", "--threads", "1", *extra])
        assert r.exit_code == 0, r.output
        got = read_bag(_bag_path(out, "extract_small"))
        assert got.attrs["precision"] == want and want in r.output
        if want == "fp32":
            np.testing.assert_array_equal(got.features, bag.features)
        else:
            assert not np.array_equal(got.features, bag.features)  # really ran in bf16


def test_bf16_warning_on_a_cpu_without_bf16(small_slide, reference, params, extractor, tmp_path, monkeypatch, caplog):
    from ghanet_pipeline.env import runtime

    monkeypatch.setattr(runtime, "cpu_info", lambda: runtime.CpuInfo("Old CPU", frozenset({"avx2"})))
    out_ref, _ = reference
    shutil.copytree(out_ref / "segment", tmp_path / "segment")
    ex = Extractor(params.__class__(**{**params.__dict__, "precision": "bf16"}), encoder=extractor.encoder)
    assert ex.precision == "bf16"  # honoured, but said to be slow
    assert any("emulated" in rec.message and "--precision fp32" in rec.message for rec in caplog.records)
    res = ex.extract(_spec(small_slide), tmp_path)
    assert res.status == "done" and "emulated" in res.message


def _slow_without_bf16(fn):
    from ghanet_pipeline.env.runtime import cpu_info

    return fn if cpu_info().has_bf16 else pytest.mark.slow(fn)


@_slow_without_bf16
def test_real_slide_bf16_agrees_with_fp32_per_patch(real_slide, tmp_path):
    """The real test slide at the full 256 px input: every patch's bf16 features have cosine >= 0.9999 to fp32."""
    spec = _spec(real_slide, "CMU-1-Small-Region")
    bags = {}
    for prec in ("fp32", "bf16"):
        p = ExtractParams(weights="random", batch_size=16, num_workers=0, device="cpu", precision=prec)
        res = Extractor(p).extract(spec, tmp_path / prec)
        assert res.status == "done", res.message
        bags[prec] = read_bag(res.metrics["bag"])
        assert bags[prec].attrs["precision"] == prec
    a, b = bags["fp32"].features, bags["bf16"].features
    assert len(a) == 34 and not np.array_equal(a, b)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.9999, cos.min()


def test_reader_thread_main_thread_and_openslide_only_give_the_same_bag(reference, small_slide, extractor, params,
                                                                         tmp_path):
    """In-process reading on a background thread, in the main thread, and without raw tiles: same bytes."""
    out_ref, bag = reference
    for name, change in (("thread", {"reader_thread": True}), ("main", {"reader_thread": False}),
                         ("openslide", {"raw_tiles": False})):
        out = tmp_path / name
        shutil.copytree(out_ref / "segment", out / "segment")
        p = params.__class__(**{**params.__dict__, "num_workers": 0, **change})
        res = Extractor(p, encoder=extractor.encoder).extract(_spec(small_slide), out)
        assert res.status == "done", res.message
        assert Path(res.metrics["bag"]).read_bytes() == bag.path.read_bytes(), name


def test_40x_slide_bags_identical_with_and_without_raw_tiles_and_fallbacks_go_to_openslide(
        make_synthetic_slide, extractor, params, tmp_path, monkeypatch):
    """A 40x slide (0.25 um/px, 256 px JPEG tiles) on the 20x grid: each 256 px patch is 512 level-0 px =
    2 x 2 tiles, decoded raw, then downsampled 2x. The segment grid: no OpenSlide read with raw tiles, and
    the bag's bytes equal the OpenSlide-only bag. A grid shifted off the tiles plus patches over the
    slide's edge: exactly those go through OpenSlide, a patch on tile corners off the 512 px grid stays
    raw, and the bag's bytes again equal the OpenSlide-only bag."""
    from ghanet_pipeline.wsi.slide import Slide

    slide = make_synthetic_slide("extract_40x.svs", 2600, 2100, mpp=0.25, phenotype=0.3, seed=5)
    seg_out = tmp_path / "seg"
    assert segment_slide(_spec(slide), seg_out, SegmentParams()).status == "done"
    coords, attrs = load_coords(segment_paths(seg_out, "s1")["coords"])
    assert int(attrs["patch_size_level0"]) == 512 and len(coords) >= 4 and not (coords % 512).any()
    shifted = coords[:4] + np.array([128, 64])  # off the tile grid
    edge = np.array([[2304, 0], [2048, 1792]])  # on tile corners, but the 2 x 2 tiles reach past the slide
    on_tiles = np.array([[256, 768]])  # on tile corners, off the 512 px grid, inside: raw
    variants = {"grid": coords, "shifted+edge": np.concatenate([shifted, edge, on_tiles])}

    reads: list[tuple[int, int]] = []
    real = Slide.read_region

    def counting(self, x0, y0, level, size):
        if tuple(size) == (512, 512):  # patch reads (the extractor reads no other region of this size)
            reads.append((int(x0), int(y0)))
        return real(self, x0, y0, level, size)

    monkeypatch.setattr(Slide, "read_region", counting)
    for name, cc in variants.items():
        bags = {}
        for raw in (True, False):
            out = tmp_path / f"{name}_{raw}"
            shutil.copytree(seg_out / "segment", out / "segment")
            with h5py.File(segment_paths(out, "s1")["coords"], "r+") as f:
                f["coords"].resize((len(cc), 2))
                f["coords"][...] = cc
            reads.clear()
            p = params.__class__(**{**params.__dict__, "num_workers": 0, "raw_tiles": raw})
            res = Extractor(p, encoder=extractor.encoder).extract(_spec(slide), out)
            assert res.status == "done", res.message
            bags[raw] = Path(res.metrics["bag"]).read_bytes()
            want = [tuple(c) for c in cc.tolist()]
            if raw:
                want = [] if name == "grid" else [tuple(c) for c in np.concatenate([shifted, edge]).tolist()]
            assert reads == want, (name, raw)
        assert bags[True] == bags[False], name
        np.testing.assert_array_equal(read_bag(_bag_path(tmp_path / f"{name}_True")).coords, cc)
