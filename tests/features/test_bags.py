"""Bag HDF5 contract: writer, validator, readers for our and CLAM/TRIDENT formats, compatibility checks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from ghanet_pipeline.core.errors import InputError, MismatchError
from ghanet_pipeline.features.bags import (
    REQUIRED_ATTRS,
    BagWriter,
    encoder_tag,
    find_bags,
    read_bag,
    read_bag_attrs,
    validate_bag,
    write_bag,
)
from ghanet_pipeline.features.compatibility import check_compatible


def _attrs(**over):
    a = {"schema_version": 1, "slide_id": "s1", "encoder": "resnet50_trunc", "weights_sha256": "ab" * 32,
         "input_size": 256, "target_mpp": 0.5, "patch_size": 256, "patch_size_level0": 256, "level0_mpp": 0.5,
         "source_name": "s1.svs", "source_bytes": 123, "ghanet_version": "0.1.0"}
    a.update(over)
    return a


def _data(n=5, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), (rng.integers(0, 10_000, size=(n, 2)) * 1).astype(np.int64)


def test_written_bag_follows_the_schema(tmp_path):
    f, c = _data(n=2500, d=16)
    path = write_bag(tmp_path / "s1.h5", f, c, _attrs(), chunk_rows=1024)
    assert validate_bag(path) == []
    with h5py.File(path, "r") as h5:
        assert h5["features"].dtype == np.float32 and h5["features"].shape == (2500, 16)
        assert h5["coords"].dtype == np.int64 and h5["coords"].shape == (2500, 2)
        assert h5["features"].chunks == (1024, 16) and h5["coords"].chunks[0] == 1024  # blocks of rows
        assert bool(h5.attrs["complete"]) is True
        assert list(h5.attrs.keys())[-1] == "complete"  # written last
    bag = read_bag(path)
    assert bag.format == "ghanet" and bag.n == 2500 and bag.dim == 16
    np.testing.assert_array_equal(bag.features, f)
    np.testing.assert_array_equal(bag.coords, c)
    assert all(k in bag.attrs for k in REQUIRED_ATTRS)
    assert not list(tmp_path.glob(".*.tmp"))


def test_small_and_empty_bags_and_float16(tmp_path):
    f, c = _data(n=3)
    p = write_bag(tmp_path / "a.h5", f, c, _attrs(), dtype="float16")
    with h5py.File(p, "r") as h5:
        assert h5["features"].dtype == np.float16 and h5["features"].chunks == (3, 8)
    assert read_bag(p).features.dtype == np.float32
    np.testing.assert_allclose(read_bag(p).features, f, atol=2e-3)
    p0 = write_bag(tmp_path / "empty.h5", np.zeros((0, 8), np.float32), np.zeros((0, 2), np.int64), _attrs())
    assert validate_bag(p0) == [] and read_bag(p0).n == 0


def test_identical_inputs_give_identical_files(tmp_path):
    f, c = _data()
    a = write_bag(tmp_path / "a.h5", f, c, _attrs())
    b = write_bag(tmp_path / "b.h5", f, c, _attrs())
    assert a.read_bytes() == b.read_bytes()


def test_interrupted_writer_leaves_nothing_and_incomplete_bag_is_invalid(tmp_path):
    f, c = _data(n=10)
    with pytest.raises(KeyboardInterrupt):
        with BagWriter(tmp_path / "s1.h5", 10, 8, _attrs()) as w:
            w.write(0, f[:5], c[:5])
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="rows never written"):
        with BagWriter(tmp_path / "s1.h5", 10, 8, _attrs()) as w:
            w.write(0, f[:5], c[:5])
    assert list(tmp_path.iterdir()) == []
    # a bag whose complete flag is not set (e.g. copied mid-write) is reported, and read_bag refuses it
    p = write_bag(tmp_path / "s1.h5", f, c, _attrs())
    with h5py.File(p, "r+") as h5:
        h5.attrs["complete"] = False
    assert "incomplete" in validate_bag(p)[0]
    with pytest.raises(InputError, match="incomplete"):
        read_bag(p)


def test_validate_reports_expected_values(tmp_path):
    f, c = _data()
    p = write_bag(tmp_path / "s1.h5", f, c, _attrs())
    assert validate_bag(p, {"input_size": 256, "target_mpp": 0.5 + 1e-12}) == []
    probs = validate_bag(p, {"input_size": 224})
    assert len(probs) == 1 and "input_size=256, expected 224" in probs[0]
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert "cannot be read as HDF5" in validate_bag(tmp_path / "junk.h5")[0]


def test_clam_and_trident_h5_are_read(tmp_path):
    f, c = _data(n=7, d=1024)
    clam = tmp_path / "TCGA-01.h5"
    with h5py.File(clam, "w") as h5:  # CLAM: features (N, D), coords (N, 2) with attrs on coords
        h5["features"] = f
        h5["coords"] = c.astype(np.int32)
        h5["coords"].attrs["patch_size"] = 256
        h5["coords"].attrs["patch_level"] = 0
    bag = read_bag(clam)
    assert bag.format == "clam-h5" and bag.attrs["slide_id"] == "TCGA-01" and bag.attrs["patch_size"] == 256
    np.testing.assert_array_equal(bag.features, f)
    assert bag.coords.dtype == np.int64
    trident = tmp_path / "T2.h5"
    with h5py.File(trident, "w") as h5:  # (1, N, D) features and (1, N, 2) coords
        h5["features"] = f[None]
        h5["coords"] = c[None]
    bag = read_bag(trident)
    assert bag.features.shape == (7, 1024) and bag.coords.shape == (7, 2)


def test_clam_pt_is_read_without_unpickling(tmp_path):
    f, _ = _data(n=4, d=1024)
    p = tmp_path / "slideA.pt"
    torch.save(torch.from_numpy(f), p)
    bag = read_bag(p)
    assert bag.format == "clam-pt" and bag.coords is None and bag.attrs["slide_id"] == "slideA"
    np.testing.assert_array_equal(bag.features, f)
    evil = tmp_path / "evil.pt"
    torch.save({"features": torch.zeros(2, 3), "x": _Evil()}, evil)
    with pytest.raises(InputError, match="holds Python objects.*unpickling"):
        read_bag(evil)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_bag(tmp_path / "none.h5")
    p = tmp_path / "coordsonly.h5"
    with h5py.File(p, "w") as h5:
        h5["coords"] = np.zeros((3, 2), np.int64)
    with pytest.raises(InputError, match="coordsonly.h5 has no 'features'"):
        read_bag(p)


def test_mixing_encoders_is_rejected(tmp_path):
    f, c = _data()
    a = read_bag(write_bag(tmp_path / "a.h5", f, c, _attrs(slide_id="a")))
    b = read_bag(write_bag(tmp_path / "b.h5", f, c, _attrs(slide_id="b")))
    check_compatible([a, b])  # same set-up: fine
    cases = {"encoder": "uni", "weights_sha256": "random:0", "input_size": 224, "patch_size": 512,
             "target_mpp": 0.25}
    for key, val in cases.items():
        other = read_bag(write_bag(tmp_path / f"x_{key}.h5", f, c, _attrs(slide_id="x", **{key: val})))
        with pytest.raises(MismatchError) as err:
            check_compatible([a, b, other])
        msg = str(err.value)
        assert str(a.path) in msg and str(other.path) in msg and key in msg and repr(val) in msg
    # a CLAM bag carries no encoder record: it cannot be mixed with ours
    clam = tmp_path / "clam.h5"
    with h5py.File(clam, "w") as h5:
        h5["features"] = f
        h5["coords"] = c
    with pytest.raises(MismatchError, match="encoder: 'resnet50_trunc' vs 'unknown'"):
        check_compatible([a, read_bag(clam)])
    # attr dicts with names work too, and feature dims are compared when given
    with pytest.raises(MismatchError, match="dim: 8 vs 16"):
        check_compatible([{**_attrs(), "dim": 8}, {**_attrs(), "dim": 16}], names=["p", "q"])


def test_encoder_tag_and_find_bags(tmp_path):
    assert encoder_tag("resnet50_trunc", 256, "ab" * 32) == "resnet50_trunc_256"
    assert encoder_tag("resnet50_trunc", 224, "random:7") == "resnet50_trunc_224_random7"
    f, c = _data()
    write_bag(tmp_path / "s1.h5", f, c, _attrs())
    torch.save(torch.zeros(2, 8), tmp_path / "s2.pt")
    (tmp_path / ".s3.h5.abc.tmp").write_bytes(b"")
    assert sorted(find_bags(tmp_path)) == ["s1", "s2"]
    assert read_bag_attrs(tmp_path / "s1.h5")["input_size"] == 256
    with pytest.raises(InputError, match="run extract-features"):
        find_bags(tmp_path / "nope")
