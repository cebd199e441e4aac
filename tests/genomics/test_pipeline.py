"""`ghanet preprocess-genomics` end to end: outputs per the architecture contract (docs/architecture.md), load_fold, resuming,
counts + DESeq2, given splits, bad inputs through the CLI."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.demo.cohort import make_cohort, write_cohort_tables
from ghanet_pipeline.genomics import list_folds, load_fold


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    c = make_cohort(n_cases=60, seed=11, genes_per_family=(10, 14))
    return c, write_cohort_tables(c, d)


def _run(*args):
    res = CliRunner().invoke(cli, ["preprocess-genomics", *map(str, args)], catch_exceptions=False)
    return res.exit_code, res.output


def test_mcat_zip_end_to_end_contract(tables, tmp_path):
    c, p = tables
    code, out = _run("--table", p["table"], "--families", p["families"], "--folds", 3, "--out", tmp_path)
    assert code == 0, out
    assert "selection: ttest" in out and "Table 1" in out
    g = tmp_path / "genomics"
    cfg = json.loads((g / "config.json").read_text())
    assert cfg["de_method"] == "ttest" and cfg["input_kind"] == "mcat"
    fams = json.loads((g / "families.json").read_text())
    assert [f["name"] for f in fams] == list(c.families.columns)
    assert all(f["found_genes"] < f["listed_genes"] for f in fams)          # 2 listed genes absent per family
    cases = pd.read_csv(g / "cases.csv")
    assert list(cases.columns) == ["case_id", "survival_months", "censorship", "slide_ids"] and len(cases) == 60
    assert list_folds(g) == [0, 1, 2]
    summary = pd.read_csv(g / "summary.csv", dtype={"fold": str})
    assert set(summary["fold"]) == {"0", "1", "2", "mean"} and len(summary) == 6 * 4
    all_val = []
    for k in range(3):
        fd = load_fold(g, k)
        split = pd.read_csv(g / "splits" / f"splits_{k}.csv").fillna("")
        assert fd.train_ids == [s for s in split["train"] if s] and fd.val_ids == [s for s in split["val"] if s]
        all_val += fd.val_ids
        assert fd.families == list(c.families.columns)
        assert set(fd.targets) == set(fd.train_ids) | set(fd.val_ids)
        assert len(fd.bin_edges_months) == 5 and fd.bins_fitted_on == "train"
        assert set(fd.labels["bin"]) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(np.searchsorted(fd.bin_edges_months[1:-1], fd.labels["survival_months"],
                                                      side="right"), fd.labels["bin"])
        # planted families are found, each family's targets have its selected length, no NaN anywhere
        for fam in c.planted:
            assert {f"{g_}_rnaseq" for g_ in c.planted[fam]} & set(fd.selected[fam])
        tr = np.stack([np.concatenate(fd.targets[cid]) for cid in fd.train_ids])
        assert np.isfinite(tr).all()
        np.testing.assert_allclose(tr.mean(axis=0), 0, atol=1e-5)       # standardised on the training fold
        for i, fam in enumerate(fd.families):
            assert all(len(fd.targets[cid][i]) == len(fd.selected[fam]) for cid in fd.targets)
            assert fd.scaler[fam]["features"] == fd.selected[fam]
        row = summary[(summary["fold"] == str(k))].set_index("family")["features_after"]
        assert row.to_dict() == {f: len(v) for f, v in fd.selected.items()}
        with h5py.File(g / f"fold_{k}" / "targets.h5") as f:
            assert json.loads(f.attrs["families"]) == fd.families
            assert f["family_0"].attrs["name"] == fd.families[0] and f["family_0"].dtype == np.float32
    assert sorted(all_val) == sorted(cases["case_id"])

    # rerun: every fold skipped; other parameters without --overwrite: refused; with it: redone
    code, out = _run("--table", p["table"], "--families", p["families"], "--folds", 3, "--out", tmp_path)
    assert code == 0 and out.count("skipped") == 3
    code, out = _run("--table", p["table"], "--families", p["families"], "--folds", 2, "--out", tmp_path)
    assert code == 1 and "other inputs or parameters" in out and "--overwrite" in out
    code, out = _run("--table", p["table"], "--families", p["families"], "--folds", 2, "--bins-from", "cohort",
                     "--out", tmp_path, "--overwrite")
    assert code == 0, out
    assert list_folds(g) == [0, 1] and not (g / "splits" / "splits_2.csv").exists()
    e0, e1 = load_fold(g, 0), load_fold(g, 1)
    assert e0.bins_fitted_on == "cohort" and e0.bin_edges_months == e1.bin_edges_months


def test_empty_family_and_no_selection(tmp_path):
    """A family with zero selected genes stays in every output with empty vectors (no NaN)."""
    c = make_cohort(n_cases=60, seed=3, genes_per_family=(8, 10), planted_families=("Oncogenesis",))
    p = write_cohort_tables(c, tmp_path / "in", table_name="t.csv")
    code, out = _run("--table", p["table"], "--families", p["families"], "--folds", 2, "--pvalue", 1e-2,
                     "--out", tmp_path / "o")
    assert code == 0, out
    fd = load_fold(tmp_path / "o" / "genomics", 0)
    empty = [f for f in fd.families if not fd.selected[f]]
    assert empty and all(fd.targets[fd.train_ids[0]][fd.families.index(f)].shape == (0,) for f in empty)
    assert fd.family_sizes[fd.families.index("Oncogenesis")] > 0
    code, out = _run("--table", p["table"], "--families", p["families"], "--folds", 2, "--de-method", "none",
                     "--out", tmp_path / "n")
    fams = json.loads((tmp_path / "n" / "genomics" / "families.json").read_text())
    fd = load_fold(tmp_path / "n" / "genomics", 1)
    assert fd.family_sizes == [len(f["features"]) for f in fams]


def test_counts_deseq2_with_given_splits(tables, tmp_path):
    c, p = tables
    splits = tmp_path / "splits"
    splits.mkdir()
    ids = sorted(c.cases.index)
    rng = np.random.default_rng(0)
    val = set(rng.choice(ids, 15, replace=False))
    pd.DataFrame({"train": [i for i in ids if i not in val], "val": sorted(val) + [""] * 30}).to_csv(
        splits / "splits_0.csv")
    code, out = _run("--table", p["counts"], "--clinical", p["clinical"], "--families", p["families"],
                     "--splits", splits, "--out", tmp_path / "o")
    assert code == 0, out
    assert "selection: deseq2" in out
    g = tmp_path / "o" / "genomics"
    assert json.loads((g / "config.json").read_text())["input_kind"] == "counts"
    fd = load_fold(g, 0)
    assert set(fd.val_ids) == val and list_folds(g) == [0]
    chosen = {f for v in fd.selected.values() for f in v}
    assert len(chosen & c.planted_genes) >= len(c.planted_genes) - 2 and len(chosen - c.planted_genes) <= 1
    assert "size factors" in fd.scaler["normalisation"]["method"]
    stats = pd.read_csv(g / "fold_0" / "de_stats.csv", index_col=0)
    assert {"log2FoldChange", "padj"} <= set(stats.columns)


def test_bad_inputs_through_cli(tables, tmp_path):
    c, p = tables
    # float values given to DESeq2: normalised MCAT values, and a counts matrix with one non-integer
    code, out = _run("--table", p["table"], "--families", p["families"], "--de-method", "deseq2",
                     "--out", tmp_path / "a")
    assert code == 1 and "is not a raw count" in out and "--de-method ttest" in out
    counts = c.counts.astype(float)
    counts.iloc[3, 7] = 12.5
    counts.rename_axis("gene_name").to_csv(tmp_path / "float_counts.csv")
    code, out = _run("--table", tmp_path / "float_counts.csv", "--clinical", p["clinical"], "--families",
                     p["families"], "--de-method", "deseq2", "--out", tmp_path / "a2")
    assert code == 1 and f"case '{counts.columns[7]}', column '{counts.index[3]}': value 12.5 is not a raw count" in out
    # split names cases absent from the table
    splits = tmp_path / "splits"
    splits.mkdir()
    pd.DataFrame({"train": list(c.cases.index[:30]) + ["GHOST-1"], "val": list(c.cases.index[30:]) + [""] * 1}
                 ).to_csv(splits / "splits_0.csv", index=False)
    code, out = _run("--table", p["table"], "--families", p["families"], "--splits", splits, "--out", tmp_path / "b")
    assert code == 1 and "splits_0.csv" in out and "GHOST-1" in out
    # no family matches at all
    fam = tmp_path / "fam.csv"
    pd.DataFrame({"A": ["XYZ1"], "B": ["XYZ2"]}).to_csv(fam, index=False)
    code, out = _run("--table", p["table"], "--families", fam, "--out", tmp_path / "c")
    assert code == 1 and "no gene of any family matches" in out
    # bad option value -> usage error (exit 2)
    code, out = _run("--table", p["table"], "--families", p["families"], "--lfc", -1, "--out", tmp_path / "d")
    assert code == 2 and "--lfc" in out


def test_impute_train_mean(tmp_path):
    c = make_cohort(n_cases=40, seed=2, genes_per_family=(8, 10))
    t = c.table.copy()
    col = f"{c.planted['Oncogenesis'][0]}_rnaseq"
    t[col] = t[col].astype(object)
    t.loc[t["case_id"] == t["case_id"].iloc[5], col] = ""
    c.table = t
    p = write_cohort_tables(c, tmp_path / "in", table_name="t.csv")
    code, out = _run("--table", p["table"], "--families", p["families"], "--folds", 2, "--out", tmp_path / "o")
    assert code == 1 and f"column '{col}': missing feature value" in out and "--impute train-mean" in out
    code, out = _run("--table", p["table"], "--families", p["families"], "--folds", 2, "--impute", "train-mean",
                     "--de-method", "none", "--out", tmp_path / "o")
    assert code == 0, out
    g = tmp_path / "o" / "genomics"
    for k in (0, 1):
        fd = load_fold(g, k)
        assert all(np.isfinite(v).all() for vs in fd.targets.values() for v in vs)
        assert fd.scaler["normalisation"]["imputed_values"] >= 1
