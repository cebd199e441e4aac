"""benchmarks/compare_precisions.py refuses a demo run whose training bags are not fp32 (int8 comparison)."""

from __future__ import annotations

import h5py

from benchmarks import compare_precisions as CP


def _bag(path, precision):
    """An HDF5 file with the one attr the check reads (the check opens no dataset)."""
    with h5py.File(path, "w") as h5:
        h5.attrs["precision"] = precision


def _demo_run(root, precisions):
    """A demo-shaped folder: training manifest, genomics table, one bag per slide with ``precision``."""
    data, feats = root / "demo-data", root / "features" / "resnet50_trunc_256"
    data.mkdir(parents=True)
    feats.mkdir(parents=True)
    (data / "genomics_table.csv").write_text("case_id\n")
    (data / "manifest.csv").write_text("slide_id,path\n" + "".join(f"S{i},s{i}.tif\n" for i in range(len(precisions))))
    for i, p in enumerate(precisions):
        _bag(feats / f"S{i}.h5", p)
    _bag(feats / "HELD-OUT.h5", "bf16")
    return root


def test_int8_comparison_needs_fp32_training_bags(tmp_path, capsys):
    bf16 = _demo_run(tmp_path / "a", ["fp32", "bf16"])
    assert CP.main(["--demo-out", str(bf16), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "are bf16, fp32, not fp32" in err and "--precision fp32 --overwrite" in err
    # a held-out slide's bf16 bag does not count: only the training manifest's slides are checked
    ok = _demo_run(tmp_path / "b", ["fp32", "fp32"])
    folder = ok / "features" / "resnet50_trunc_256"
    assert CP.bag_precisions(folder, ok / "demo-data" / "manifest.csv") == {"fp32"}
