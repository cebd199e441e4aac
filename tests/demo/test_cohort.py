"""Synthetic cohort: shapes, coding conventions, the planted signal and the survival signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ghanet_pipeline.demo.cohort import FAMILY_NAMES, make_cohort, write_cohort_tables
from ghanet_pipeline.evaluation.metrics import concordance_index
from ghanet_pipeline.genomics.tables import read_counts, read_mcat_table


def test_tables_are_consistent_and_deterministic():
    c = make_cohort(n_cases=40, seed=3)
    again = make_cohort(n_cases=40, seed=3)
    pd.testing.assert_frame_equal(c.table, again.table)
    assert c.clinical["case_id"].nunique() == 40
    assert list(c.clinical["slide_id"]) == list(c.table["slide_id"])
    assert c.clinical["slide_id"].is_unique
    assert set(c.clinical["censorship"]) <= {0, 1}
    assert c.clinical["phenotype"].between(0, 1).all()
    assert (c.clinical["survival_months"] > 0).all()
    assert list(c.families.columns) == list(FAMILY_NAMES)
    assert c.counts.shape == (len(c.genes), 40)
    assert c.counts.to_numpy().dtype.kind == "i" and (c.counts.to_numpy() >= 0).all()
    cnv = c.table.filter(like="_cnv").to_numpy()
    mut = c.table.filter(like="_mut").to_numpy()
    assert set(np.unique(cnv)) <= {-2, -1, 0, 1, 2} and set(np.unique(mut)) <= {0, 1}
    # planted genes only in some families, all present in the data and listed in their family
    assert 0 < len(c.planted) < len(FAMILY_NAMES)
    for fam, genes in c.planted.items():
        assert set(genes) <= set(c.families[fam].dropna()) and set(genes) <= set(c.genes)
    # some listed genes are absent from the data (listed > found, as on real tables)
    listed = {g for col in c.families for g in c.families[col].dropna()}
    assert listed - set(c.genes)
    assert not make_cohort(40, seed=4).table.equals(c.table)


def test_phenotype_drives_survival_and_planted_genes_only():
    c = make_cohort(n_cases=300, seed=0)
    cases = c.cases
    ci = concordance_index(cases["survival_months"], 1 - cases["censorship"], cases["phenotype"])
    assert ci > 0.75
    assert 0.2 < cases["censorship"].mean() < 0.5
    logc = np.log1p(c.counts.loc[:, cases.index].to_numpy(float))
    rho = np.array([stats.spearmanr(row, cases["phenotype"]).statistic for row in logc])
    planted = np.isin(c.genes, sorted(c.planted_genes))
    assert (rho[planted] > 0.5).all()
    assert (np.abs(rho[~planted]) < 0.3).all()


def test_written_tables_read_back(tmp_path):
    c = make_cohort(n_cases=30, seed=1)
    paths = write_cohort_tables(c, tmp_path)
    assert paths["table"].name.endswith(".csv.zip")
    data = read_mcat_table(paths["table"])
    assert len(data.clinical) == 30
    assert data.clinical["slide_ids"].str.contains(";").sum() == (c.clinical.groupby("case_id").size() > 1).sum()
    counts = read_counts(paths["counts"], paths["clinical"])
    assert counts.features.shape == (30, len(c.genes))
    np.testing.assert_array_equal(counts.features.loc[c.counts.columns, c.genes].to_numpy(), c.counts.T.to_numpy())
    fam = pd.read_csv(paths["families"])
    assert list(fam.columns) == list(FAMILY_NAMES)


def test_bad_arguments():
    with pytest.raises(ValueError, match="planted"):
        make_cohort(planted_families=("Nope",))
