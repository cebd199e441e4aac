"""Folds (MCAT splits read/write, stratified k-fold) and survival bins (train fold vs cohort)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ghanet_pipeline.core.errors import InputError
from ghanet_pipeline.demo.cohort import make_cohort
from ghanet_pipeline.genomics.bins import assign_bins, fit_bin_edges
from ghanet_pipeline.genomics.folds import make_folds, read_splits, write_splits


def test_bins_quantiles_of_event_times_with_widened_outer_edges():
    times = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 50])
    cens = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1])   # 1 and 50 censored: only outer edges
    edges = fit_bin_edges(times, cens, times.min(), times.max())
    np.testing.assert_allclose(edges, [1.0, 3.75, 5.5, 7.25, 50.0])
    np.testing.assert_array_equal(assign_bins(times, edges), [0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
    # outside the edges: clipped into the outer bins; an edge value belongs to the bin above it
    np.testing.assert_array_equal(assign_bins([0.0, 3.75, 1e9], edges), [0, 1, 3])
    with pytest.raises(InputError, match="only 1 event"):
        fit_bin_edges(times, np.r_[0, np.ones(9)], 0, 60)


def test_train_bins_differ_from_cohort_bins_and_cover_everyone():
    c = make_cohort(80, seed=2).cases
    folds = make_folds(c, 4, seed=0)
    train, val = folds[0]
    t_all, e_all = c["survival_months"].to_numpy(), c["censorship"].to_numpy()
    tr = c.loc[train]
    e_train = fit_bin_edges(tr["survival_months"], tr["censorship"], t_all.min(), t_all.max())
    e_cohort = fit_bin_edges(t_all, e_all, t_all.min(), t_all.max())
    assert e_train[0] == e_cohort[0] == t_all.min() and e_train[-1] == e_cohort[-1] == t_all.max()
    assert not np.allclose(e_train[1:-1], e_cohort[1:-1])   # validation cases do not shape training bins
    # the train edges only depend on training cases: changing a validation time leaves them unchanged
    c2 = c.copy()
    c2.loc[val[0], "survival_months"] = float(np.median(t_all))
    tr2 = c2.loc[train]
    np.testing.assert_allclose(fit_bin_edges(tr2["survival_months"], tr2["censorship"], t_all.min(), t_all.max()),
                               e_train)
    b = assign_bins(t_all, e_train)
    assert set(b) == {0, 1, 2, 3}


def test_make_folds_partition_stratified_and_seeded():
    c = make_cohort(100, seed=1).cases
    folds = make_folds(c, 5, seed=7)
    vals = [set(v) for _, v in folds]
    assert set().union(*vals) == set(c.index) and sum(map(len, vals)) == 100
    assert all(len(v) == 20 for v in vals)
    for train, val in folds:
        assert not set(train) & set(val) and len(train) + len(val) == 100
        # events balanced across folds (stratified): each fold within 2 of the expected count
        ev = (c.loc[val, "censorship"] == 0).sum()
        assert abs(ev - (c["censorship"] == 0).sum() / 5) <= 2
    assert make_folds(c, 5, seed=7) == folds
    assert make_folds(c, 5, seed=8) != folds
    with pytest.raises(InputError, match="more folds than cases"):
        make_folds(c.iloc[:3], 5)


def test_splits_round_trip_mcat_format(tmp_path):
    c = make_cohort(23, seed=0).cases
    folds = make_folds(c, 3, seed=0)
    write_splits(tmp_path, folds)
    df = pd.read_csv(tmp_path / "splits_0.csv")
    assert list(df.columns) == ["train", "val"] and len(df) == len(folds[0][0])
    assert df["val"].isna().sum() == len(folds[0][0]) - len(folds[0][1])   # shorter column padded
    assert read_splits(tmp_path, list(c.index)) == folds
    # MCAT's own files carry an unnamed index column; they read the same
    df.to_csv(tmp_path / "splits_0.csv", index=True)
    assert read_splits(tmp_path, list(c.index))[0] == folds[0]


def test_splits_errors(tmp_path):
    ids = ["a", "b", "c", "d"]
    pd.DataFrame({"train": ["a", "b", "zz"], "val": ["c", "d", "yy"]}).to_csv(tmp_path / "splits_0.csv", index=False)
    with pytest.raises(InputError, match=r"splits_0\.csv: 2 case\(s\) are not in the genomics table: \['zz', 'yy'\]"):
        read_splits(tmp_path, ids)
    pd.DataFrame({"train": ["a", "b"], "val": ["b", "d"]}).to_csv(tmp_path / "splits_0.csv", index=False)
    with pytest.raises(InputError, match=r"\['b'\] are in both train and val"):
        read_splits(tmp_path, ids)
    pd.DataFrame({"train": ["a", "b"], "val": ["c", "d"]}).to_csv(tmp_path / "splits_0.csv", index=False)
    pd.DataFrame({"train": ["a", "b"], "val": ["c", "d"]}).to_csv(tmp_path / "splits_2.csv", index=False)
    with pytest.raises(InputError, match="without gaps"):
        read_splits(tmp_path, ids)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no splits_"):
        read_splits(tmp_path / "empty", ids)
