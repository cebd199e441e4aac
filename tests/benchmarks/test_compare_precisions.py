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


def test_the_seed_control_trains_the_second_fp32_arm_with_another_seed(tmp_path, monkeypatch):
    """``--compare seed``: both arms fp32 on the same bags; only the second arm's seed moves (by SEED_OFFSET),
    the pairing keys stay the replicate's seed, and Spearman compares the two arms' out-of-fold risks."""
    import argparse
    from types import SimpleNamespace

    calls = []

    def fake_cv(feats, gdir, model, seed, args, over, run_name):
        calls.append((seed, dict(over), run_name))
        run_dir = tmp_path / run_name
        run_dir.mkdir()
        risks = [1, 2, 3, 4] if seed < CP.SEED_OFFSET else [1, 2, 4, 3]
        (run_dir / "predictions.csv").write_text("case_id,risk\n" + "".join(f"C{i},{r}\n" for i, r in enumerate(risks)))
        return {0: 0.7}, SimpleNamespace(run_dir=run_dir), 1.0

    monkeypatch.setattr(CP.cv, "cross_validate", fake_cv)
    arms = {"fp32": (tmp_path, {"precision": "fp32"}),
            "reseeded": (tmp_path, {"precision": "fp32", "seed_offset": CP.SEED_OFFSET})}
    rows, rho = CP.replicate(arms, tmp_path, 0, 2, argparse.Namespace(), {})
    assert [c[0] for c in calls] == [2, 2 + CP.SEED_OFFSET]
    assert all(c[1] == {"precision": "fp32"} for c in calls)  # seed_offset is not a TrainConfig field
    assert [r["seed"] for r in rows] == [2, 2]  # paired on the replicate's seed
    assert abs(rho["spearman"] - 0.8) < 1e-9  # ranks 1234 vs 1243
    assert CP.COMPARISONS["seed"][1] == "seed_control"
