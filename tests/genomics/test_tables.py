"""Reading MCAT tables, counts and clinical tables; every bad input gives a message naming
file, row and column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ghanet_pipeline.core.errors import InputError
from ghanet_pipeline.genomics.families import match_families, read_families
from ghanet_pipeline.genomics.tables import feature_columns, read_clinical, read_counts, read_mcat_table


def _mcat(n=6):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "case_id": [f"C{i}" for i in range(n)],
        "slide_id": [f"C{i}-s1" for i in range(n)],
        "oncotree_code": "BLCA",
        "age": rng.integers(40, 80, n),
        "survival_months": np.round(rng.uniform(1, 100, n), 2),
        "censorship": [0, 1] * (n // 2),
        "TP53_rnaseq": np.round(rng.normal(size=n), 3),
        "TP53_cnv": rng.integers(-2, 3, n),
        "EGFR_rnaseq": np.round(rng.normal(size=n), 3),
        "BRCA1_mut": rng.integers(0, 2, n),
    })
    return df


def _write(df, path):
    df.to_csv(path, index=False)
    return path


def test_mcat_reads_zip_dedupes_and_ignores_metadata(tmp_path):
    df = _mcat()
    # a second slide of case C2 with identical survival and features; an index column like MCAT's
    extra = df.iloc[[2]].copy()
    extra["slide_id"] = "C2-s2"
    df = pd.concat([df, extra], ignore_index=True)
    df.insert(5, "site", "X")             # text metadata between features would break positional slicing
    path = tmp_path / "t.csv.zip"
    df.to_csv(path, index=True, compression={"method": "zip", "archive_name": "t.csv"})
    data = read_mcat_table(path)
    assert data.kind == "mcat"
    assert list(data.clinical.index) == [f"C{i}" for i in range(6)]
    assert data.clinical.loc["C2", "slide_ids"] == "C2-s1;C2-s2"
    assert sorted(data.features.columns) == ["BRCA1_mut", "EGFR_rnaseq", "TP53_cnv", "TP53_rnaseq"]
    assert data.feature_gene["TP53_cnv"] == "TP53"
    np.testing.assert_allclose(data.features.loc["C3", "EGFR_rnaseq"], df.loc[3, "EGFR_rnaseq"])


def test_feature_columns_by_suffix_only():
    got = feature_columns(["case_id", "age", "TP53_rnaseq", "A_B_cnv", "x_mutation", "BRCA1_mut", "train"])
    assert got == {"TP53_rnaseq": "TP53", "A_B_cnv": "A_B", "BRCA1_mut": "BRCA1"}


def test_conflicting_duplicate_case_names_case_and_columns(tmp_path):
    df = _mcat()
    extra = df.iloc[[2]].copy()
    extra["EGFR_rnaseq"] += 1.0
    df = pd.concat([df, extra], ignore_index=True)
    with pytest.raises(InputError, match=r"t\.csv: case 'C2' has 2 rows \(3, 7\) that disagree on EGFR_rnaseq"):
        read_mcat_table(_write(df, tmp_path / "t.csv"))


def test_non_numeric_value_names_row_and_column(tmp_path):
    df = _mcat().astype({"TP53_rnaseq": object})
    df.loc[4, "TP53_rnaseq"] = "high"
    with pytest.raises(InputError, match=r"t\.csv: row 5 \(C4\), column 'TP53_rnaseq': feature value 'high' is not a number"):
        read_mcat_table(_write(df, tmp_path / "t.csv"))


def test_nan_is_error_by_default_and_allowed_for_imputation(tmp_path):
    df = _mcat().astype({"EGFR_rnaseq": object})
    df.loc[1, "EGFR_rnaseq"] = ""
    path = _write(df, tmp_path / "t.csv")
    with pytest.raises(InputError, match=r"row 2 \(C1\), column 'EGFR_rnaseq': missing feature value.*--impute train-mean"):
        read_mcat_table(path)
    data = read_mcat_table(path, allow_nan=True)
    assert np.isnan(data.features.loc["C1", "EGFR_rnaseq"])


@pytest.mark.parametrize("value, pattern", [
    ("", r"row 3 \(C2\), column 'survival_months': missing survival time"),
    ("-4", r"row 3 \(C2\), column 'survival_months': negative survival time -4"),
    ("soon", r"row 3 \(C2\), column 'survival_months': survival time 'soon' is not a number"),
])
def test_bad_survival_time(tmp_path, value, pattern):
    df = _mcat().astype({"survival_months": object})
    df.loc[2, "survival_months"] = value
    with pytest.raises(InputError, match=r"t\.csv: " + pattern):
        read_mcat_table(_write(df, tmp_path / "t.csv"))


def test_censorship_not_binary(tmp_path):
    df = _mcat()
    df.loc[3, "censorship"] = 2
    with pytest.raises(InputError, match=r"t\.csv: row 4 \(C3\), column 'censorship': value '2' is not 0 or 1"):
        read_mcat_table(_write(df, tmp_path / "t.csv"))


def test_event_column_is_read_and_reported(tmp_path):
    df = pd.DataFrame({"case_id": ["a", "b", "c"], "survival_months": [1, 2, 3], "event": [1, 0, 1]})
    clinical, notes = read_clinical(_write(df, tmp_path / "clin.csv"))
    assert list(clinical["censorship"]) == [0, 1, 0]
    assert any("'event' as event" in n for n in notes)


def test_missing_required_columns(tmp_path):
    df = _mcat().drop(columns=["censorship"])
    with pytest.raises(InputError, match="neither a 'censorship'"):
        read_mcat_table(_write(df, tmp_path / "t.csv"))
    df = _mcat().drop(columns=[c for c in _mcat().columns if c.endswith(("_rnaseq", "_cnv", "_mut"))])
    with pytest.raises(InputError, match="no feature columns"):
        read_mcat_table(_write(df, tmp_path / "t2.csv"))


def _clinical(tmp_path, ids):
    df = pd.DataFrame({"case_id": ids, "survival_months": np.arange(1, len(ids) + 1) * 3.0,
                       "censorship": [0, 1] * (len(ids) // 2)})
    return _write(df, tmp_path / "clinical.csv")


def test_counts_gdc_star_genes_x_samples(tmp_path):
    ids = [f"TCGA-AA-000{i}" for i in range(6)]
    clin = _clinical(tmp_path, ids)
    rows = [["N_unmapped", "N_unmapped", ""] + [100] * 6,
            ["ENSG1.1", "TP53", "protein_coding"] + [1, 2, 3, 4, 5, 6],
            ["ENSG2.1", "EGFR", "protein_coding"] + [10, 0, 30, 40, 50, 60],
            ["ENSG3.1", "EGFR", "protein_coding"] + [1, 1, 1, 1, 1, 1]]
    # sample barcodes (-01A) map to case ids by their first 12 characters
    df = pd.DataFrame(rows, columns=["gene_id", "gene_name", "gene_type"] + [f"{c}-01A" for c in ids])
    path = tmp_path / "counts.tsv"
    df.to_csv(path, sep="\t", index=False)
    data = read_counts(path, clin)
    assert data.kind == "counts"
    assert list(data.features.columns) == ["TP53", "EGFR"]
    assert list(data.features.index) == ids
    assert data.features.loc[ids[2], "EGFR"] == 31  # duplicated symbol rows summed
    assert any("genes x samples" in n for n in data.notes)
    assert any("summary" in n for n in data.notes)


def test_counts_samples_x_genes_and_missing_cases(tmp_path):
    ids = [f"P{i}" for i in range(8)]
    clin = _clinical(tmp_path, ids)
    df = pd.DataFrame({"sample": ids[:6] + ["X9"], "TP53": range(7), "EGFR": range(10, 17)})
    path = _write(df, tmp_path / "counts.csv")
    data = read_counts(path, clin)
    assert list(data.features.index) == ids[:6]
    assert list(data.features.columns) == ["TP53", "EGFR"]
    assert any("samples x genes" in n for n in data.notes)
    assert any("2 case(s)" in n and "no counts" in n for n in data.notes)
    assert any("no clinical data" in n for n in data.notes)


def test_counts_no_matching_ids(tmp_path):
    clin = _clinical(tmp_path, ["a", "b", "c", "d"])
    df = pd.DataFrame({"gene": ["TP53"], "x": [1], "y": [2]})
    with pytest.raises(InputError, match="no sample id matches a case_id"):
        read_counts(_write(df, tmp_path / "counts.csv"), clin)


def test_families_match_warn_and_error(tmp_path):
    fam = pd.DataFrame({"Tumor Suppression": ["TP53", "brca1", "NOPE"], "Oncogenesis": ["EGFR", "TP53", None],
                        "Empty": ["ZZZ1", None, None]})
    path = _write(fam, tmp_path / "fam.csv")
    families = read_families(path)
    assert [f.name for f in families] == ["Tumor Suppression", "Oncogenesis", "Empty"]
    assert families[1].genes == ["EGFR", "TP53"]
    fg = {"TP53_rnaseq": "TP53", "TP53_cnv": "TP53", "BRCA1_mut": "BRCA1", "EGFR_rnaseq": "EGFR"}
    matches, warns = match_families(families, fg, path)
    assert matches[0].features == ["BRCA1_mut", "TP53_cnv", "TP53_rnaseq"]
    assert (matches[0].listed_genes, matches[0].found_genes) == (3, 2)
    assert matches[1].features == ["EGFR_rnaseq", "TP53_cnv", "TP53_rnaseq"]  # overlap allowed
    assert matches[2].features == [] and len(warns) == 1 and "'Empty'" in warns[0]
    with pytest.raises(InputError, match=r"fam\.csv: no gene of any family matches"):
        match_families(families, {"X_rnaseq": "X"}, path)
