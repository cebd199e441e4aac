"""Real-cohort bad inputs, each a clear message naming the file, row and column, nothing else lost.

Tables are rows of the real LUAD MCAT table (../shared/data/mcat, skipped when absent) made wrong in one
way each; GDC downloads (missing, truncated, damaged files) and --slide-types are in tests/wsi/test_gdc.py, a
table slide without a bag in tests/e2e/test_real_cohort.py.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.core.errors import InputError
from ghanet_pipeline.demo.gdcdownload import MCAT_MEMBER, pick_cases, write_subtable
from ghanet_pipeline.genomics.tables import read_mcat_table
from ghanet_pipeline.wsi.inputs import read_manifest


@pytest.fixture(scope="module")
def rows(luad_rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of 12 LUAD cases (some with two slides), every column as text."""
    return pick_cases(luad_rows, 12, seed=2)


def _csv(rows: pd.DataFrame, path: Path, **kw) -> Path:
    rows.to_csv(path, index=True, **kw)
    return path


def test_zero_byte_slide_is_named_as_an_empty_download_and_the_others_go_on(tmp_path: Path, make_synthetic_slide
                                                                            ) -> None:
    good = make_synthetic_slide("bad-inputs-good.svs", 1024, 1024, mpp=0.5, seed=4)
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "good.svs").write_bytes(good.read_bytes())
    (folder / "TCGA-05-4249-01Z-00-DX1.9fce0297.svs").write_bytes(b"")
    res = CliRunner().invoke(cli, ["segment", str(folder), "--out", str(tmp_path / "out"), "--no-progress"])
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert "TCGA-05-4249-01Z-00-DX1" in text and "the file is empty (0 bytes)" in text and "--gdc-manifest" in text
    assert (tmp_path / "out/segment/good.coords.h5").is_file()


def test_one_slide_claimed_by_two_cases_names_both_rows(rows: pd.DataFrame, tmp_path: Path) -> None:
    bad = rows.copy()
    bad.loc[3, "slide_id"] = bad.loc[0, "slide_id"].replace(".svs", ".other-uuid.svs")   # same id by the rule
    assert bad.loc[3, "case_id"] != bad.loc[0, "case_id"]
    with pytest.raises(InputError) as err:
        read_mcat_table(_csv(bad, tmp_path / "t.csv"))
    msg = str(err.value)
    sid = rows.loc[0, "slide_id"].split(".")[0]
    assert f"column 'slide_id': slide '{sid}' is claimed by case '{rows.loc[0, 'case_id']}' (row 1)" in msg
    assert f"case '{bad.loc[3, 'case_id']}' (row 4)" in msg


def test_table_saved_by_excel_reads_like_the_plain_csv(rows: pd.DataFrame, tmp_path: Path) -> None:
    """UTF-8 with a byte-order mark, CRLF line ends, ';' between fields (Excel in a decimal-comma locale)."""
    plain = read_mcat_table(_csv(rows, tmp_path / "plain.csv"))
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + rows.to_csv(index=True, sep=";", lineterminator="\r\n").encode())
    got = read_mcat_table(excel)
    pd.testing.assert_frame_equal(got.clinical, plain.clinical)
    pd.testing.assert_frame_equal(got.features, plain.features)
    man = tmp_path / "m.csv"
    man.write_bytes(b"\xef\xbb\xbfslide_id;path;case_id;mpp\r\nA.1.svs;a.svs;P1;0,25\r\n")
    with pytest.raises(InputError, match=r"row 2, column mpp: '0,25' .*decimal comma"):
        read_manifest(man)
    man.write_bytes(b"\xef\xbb\xbfslide_id;path;case_id\r\nTCGA-05-4249-01Z-00-DX1.9fce.svs;a.svs;P1\r\n")
    (spec,) = read_manifest(man)
    assert (spec.slide_id, spec.case_id, spec.path.name) == ("TCGA-05-4249-01Z-00-DX1", "P1", "a.svs")


def test_duplicate_gene_columns_name_both_positions(rows: pd.DataFrame, tmp_path: Path) -> None:
    path = _csv(rows, tmp_path / "t.csv")
    header, rest = path.read_text().split("\n", 1)
    cols = header.split(",")
    j = cols.index("AATF_rnaseq")
    cols[j] = "AAK1_rnaseq"                                      # a gene measured twice
    path.write_text(",".join(cols) + "\n" + rest)
    with pytest.raises(InputError) as err:
        read_mcat_table(path)
    assert f"columns {cols.index('AAK1_rnaseq') + 1} and {j + 1} are both named 'AAK1_rnaseq'" in str(err.value)


@pytest.mark.parametrize(("value", "match"), [
    ("-3.5", r"row 3 \((TCGA-[\w-]+)\), column 'survival_months': negative survival time -3.5"),
    ("", r"row 3 \((TCGA-[\w-]+)\), column 'survival_months': missing survival time"),
    ("NA", r"row 3 \((TCGA-[\w-]+)\), column 'survival_months': missing survival time"),
])
def test_negative_or_missing_survival_months_name_the_row(rows: pd.DataFrame, tmp_path: Path, value: str,
                                                          match: str) -> None:
    bad = rows.copy()
    bad.loc[2, "survival_months"] = value
    with pytest.raises(InputError, match=match) as err:
        read_mcat_table(_csv(bad, tmp_path / "t.csv"))
    assert rows.loc[2, "case_id"] in str(err.value) and "t.csv" in str(err.value)


def test_zip_member_that_climbs_out_is_read_never_extracted(rows: pd.DataFrame, tmp_path: Path) -> None:
    """MCAT's own zips name their member ../dataset_csv_sig/../dataset_csv/<name>: read in memory only."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    table = write_subtable(rows, work / "tcga_luad_all_clean.csv.zip")
    with zipfile.ZipFile(table) as zf:
        assert zf.namelist() == [MCAT_MEMBER.format(name=table.name)]
    before = sorted(p for p in tmp_path.rglob("*"))
    data = read_mcat_table(table)
    assert len(data.clinical) == 12
    assert sorted(p for p in tmp_path.rglob("*")) == before    # nothing written anywhere, in or out
