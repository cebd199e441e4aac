"""Target normalisation: median-of-ratios size factors (training reference), z-score scaler, imputation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ghanet_pipeline.genomics.targets import fit_scaler, impute_train_mean, read_targets, size_factors, write_targets


def test_size_factors_median_of_ratios_with_training_reference():
    rng = np.random.default_rng(0)
    base = rng.integers(5, 500, size=30).astype(float)
    depth = np.array([1.0, 2.0, 0.5, 4.0, 3.0, 0.25])
    counts = depth[:, None] * base[None, :]
    train = np.array([True, True, True, True, False, False])
    sf, log_geo, note = size_factors(counts, train)
    # reference = geometric mean over training rows -> sf = depth / geometric mean of the training depths
    np.testing.assert_allclose(sf, depth / np.exp(np.log(depth[train]).mean()), rtol=1e-12)
    np.testing.assert_allclose(log_geo, np.log(counts[train]).mean(axis=0))
    assert "30 genes" in note
    # validation rows never change the reference (no leakage)
    other = counts.copy()
    other[~train] *= rng.uniform(0.1, 10, size=(2, 30))
    sf2, log_geo2, _ = size_factors(other, train)
    np.testing.assert_allclose(sf2[train], sf[train])
    np.testing.assert_allclose(log_geo2, log_geo)


def test_size_factors_skip_genes_with_training_zeros_and_zero_counts_in_validation():
    counts = np.array([[10, 0, 20, 40], [20, 5, 40, 80], [40, 9, 80, 160], [5, 3, 0, 20]], dtype=float)
    train = np.array([True, True, True, False])
    sf, log_geo, note = size_factors(counts, train)
    assert np.isnan(log_geo[1]) and "3 genes" in note            # gene 1 has a zero in training
    np.testing.assert_allclose(sf[:3], [0.5, 1.0, 2.0])
    # validation case: gene 2 is 0 (ignored), genes 0 and 3 give ratios 0.25 -> median 0.25
    np.testing.assert_allclose(sf[3], 0.25)
    sf0, _, note0 = size_factors(np.array([[0, 1.0], [1.0, 0]]), np.array([True, True]))
    np.testing.assert_array_equal(sf0, [1.0, 1.0])
    assert "size factors = 1" in note0


def test_scaler_uses_training_cases_and_floors_constant_features():
    x = pd.DataFrame({"a": [1.0, 3.0, 100.0], "b": [5.0, 5.0, 7.0]}, index=["t1", "t2", "v1"])
    sc = fit_scaler(x, ["t1", "t2"])
    np.testing.assert_allclose(sc.mean, [2.0, 5.0])
    np.testing.assert_allclose(sc.std, [1.0, 1.0])                  # b is constant in training -> std 1
    z = sc.transform(x.to_numpy())
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, [[-1, 0], [1, 0], [98, 2]])


def test_impute_train_mean_only_from_training_rows():
    x = pd.DataFrame({"a": [1.0, 2.0, np.nan, 100.0], "b": [np.nan, np.nan, 1.0, 4.0]},
                     index=["t1", "t2", "t3", "v1"])
    out, n = impute_train_mean(x, ["t1", "t2", "t3"], integer=True)
    assert n == 3
    assert out.loc["t3", "a"] == 2.0                                # round(1.5), never the validation 100
    assert out.loc["t1", "b"] == 1.0 and out.loc["t2", "b"] == 1.0
    same, n0 = impute_train_mean(x.fillna(0), ["t1"])
    assert n0 == 0 and same.equals(x.fillna(0))


def test_targets_round_trip(tmp_path):
    mats = [np.arange(6, dtype=np.float32).reshape(3, 2), np.zeros((3, 0), np.float32)]
    write_targets(tmp_path / "t.h5", ["c1", "c2", "c3"], ["F A", "F B"], mats, attrs={"fold": 2})
    ids, fams, got, attrs = read_targets(tmp_path / "t.h5")
    assert ids == ["c1", "c2", "c3"] and fams == ["F A", "F B"]
    np.testing.assert_array_equal(got[0], mats[0])
    assert got[1].shape == (3, 0) and attrs["fold"] == 2 and attrs["complete"]
