"""A real TCGA cohort as it arrives: the LUAD MCAT table (GDC file names with UUIDs in ``slide_id``, patients
with two slides) meets bags, slides and a gdc-client download with no manifest and no flag.

The table is the real one from ../shared/data/mcat (skipped when absent); slides are small synthetic ones
named exactly as the table's GDC files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ghanet_pipeline.core.errors import IdMismatchError
from ghanet_pipeline.core.slideids import slide_id_from_name
from ghanet_pipeline.demo.gdcdownload import write_gdc_download, write_subtable
from ghanet_pipeline.genomics.tables import read_mcat_table
from ghanet_pipeline.testing import package_env
from ghanet_pipeline.training.data import map_cases


def _case_slides(rows: pd.DataFrame) -> dict[str, list[str]]:
    return {c: list(g["slide_id"]) for c, g in rows.groupby("case_id", sort=False)}


def test_luad_table_slide_ids_meet_bags_named_by_the_rule(luad_rows: pd.DataFrame, tmp_path: Path) -> None:
    """Every case finds its bags (every slide of a multi-slide patient); what does not meet is counted, with
    examples from both sides, in one warning."""
    slides = _case_slides(luad_rows)
    two = [c for c, s in slides.items() if len(s) >= 2]   # 21 patients with 2 or 3 slides
    assert len(two) == 21 and all(".svs" in s and s.count(".") == 2 for s in luad_rows["slide_id"])
    bags = {slide_id_from_name(s): tmp_path / f"{slide_id_from_name(s)}.h5" for s in luad_rows["slide_id"]}
    gone_slide = slides[two[0]][1]                       # one slide of a multi-slide patient has no bag
    gone_case = next(c for c, s in slides.items() if len(s) == 1)   # a patient without any bag
    del bags[slide_id_from_name(gone_slide)], bags[slide_id_from_name(slides[gone_case][0])]
    bags["TCGA-XX-0000-01Z-00-DX1"] = tmp_path / "TCGA-XX-0000-01Z-00-DX1.h5"   # a bag no case claims
    m = map_cases(list(slides), bags, slides)
    assert m.missing == [gone_case]
    assert len(m.found) == len(slides) - 1
    assert [p.stem for p in m.found[two[1]]] == sorted(slide_id_from_name(s) for s in slides[two[1]])
    assert len(m.found[two[0]]) == len(slides[two[0]]) - 1
    w = m.warning
    assert w is not None and "up to the first dot" in w
    assert "1 slide(s) listed in genomics cases.csv have none in the bags" in w and f"{gone_slide} (case {two[0]})" in w
    assert f"1 of {len(slides)} case(s) have no bag and are skipped: {gone_case}" in w
    assert "1 id(s) in the bags belong to no case" in w and "TCGA-XX-0000-01Z-00-DX1" in w


def test_luad_genomics_keeps_rule_slide_ids_and_two_slide_patients(luad: Path) -> None:
    data = read_mcat_table(luad / "tcga_luad_all_clean.csv.zip")
    ids = data.clinical["slide_ids"]
    assert len(data.clinical) == 453 and data.features.shape[1] > 3000
    assert (ids.str.count(";") >= 1).sum() == 21            # multi-slide patients keep every slide
    first = ids.iloc[0].split(";")[0]
    assert first == "TCGA-05-4249-01Z-00-DX1"               # the GDC file name up to its first dot


def test_ids_that_never_meet_exit_2_naming_the_rule_and_the_fix(tmp_path: Path) -> None:
    from ghanet_pipeline.training.data import training_cases

    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "cases.csv").write_text("case_id,survival_months,censorship,slide_ids\n"
                                              "P1,10,0,P1-slide.abc.svs\nP2,5,1,P2-slide\n")
    feats = tmp_path / "f"
    feats.mkdir()
    (feats / "scan_0001.h5").write_bytes(b"")
    with pytest.raises(IdMismatchError) as err:
        training_cases(tmp_path / "g", feats, ["P1", "P2"], None, None, None)
    msg = str(err.value)
    assert "up to the first dot" in msg and "P1-slide.abc.svs" in msg and "scan_0001" in msg
    assert "--manifest" in msg and "--case-id-from tcga" in msg
    from ghanet_pipeline.core.errors import ConfigError

    assert isinstance(err.value, ConfigError)  # the CLI exits 2


def test_tcga_patient_case_ids_find_their_bags_without_slide_ids(tmp_path: Path) -> None:
    """A clinical table without slide ids (case_id = TCGA patient barcode) needs no --case-id-from."""
    bags = {s: tmp_path / f"{s}.h5" for s in ("TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0001-01Z-00-DX2",
                                              "TCGA-AA-0002-01Z-00-DX1", "TCGA-AA-0002-01A-01-TS1")}
    m = map_cases(["TCGA-AA-0001", "TCGA-AA-0002"], bags, {}, slide_types=("DX",))
    assert {c: [p.stem for p in v] for c, v in m.found.items()} == {
        "TCGA-AA-0001": ["TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0001-01Z-00-DX2"],
        "TCGA-AA-0002": ["TCGA-AA-0002-01Z-00-DX1"]}
    assert m.types is not None and m.types.left_out == {"TS": ["TCGA-AA-0002-01A-01-TS1"]}


def _ghanet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ghanet_pipeline", *args], cwd=cwd, capture_output=True,
                          text=True, check=False, env=package_env(OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_gdc_download_and_mcat_table_train_with_the_documented_commands(luad: Path, luad_rows: pd.DataFrame,
                                                                        tmp_path: Path) -> None:
    """segment -> extract -> genomics -> train -> predict on a gdc-client layout of 6 real LUAD cases (3 with two
    slides) with their MCAT rows: no manifest, no flag. A truncated download fails alone (exit 1) and its case is
    skipped; every other case gets a validation risk; a two-slide patient is predicted as one case."""
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    per_case = luad_rows.groupby("case_id", sort=False).agg(n=("slide_id", "size"), c=("censorship", "first"))
    events = per_case[per_case["c"].astype(float) == 0]   # deaths: every 2-fold training half can fit its bins
    chosen = list(events[events["n"] == 2].index[:3]) + list(events[events["n"] == 1].index[:3])
    rows = luad_rows[luad_rows["case_id"].isin(chosen)].reset_index(drop=True)
    names = list(rows["slide_id"])
    assert rows.groupby("case_id").size().max() == 2 and len(rows) == 9   # 3 two-slide patients
    dl = tmp_path / "gdc-download"
    write_gdc_download(dl, names, lambda p, i: write_synthetic_slide(p, 1024, 1024, phenotype=(i % 5) / 4, seed=i))
    single = rows.groupby("case_id").filter(lambda g: len(g) == 1)
    broken_case, broken_name = single.iloc[0]["case_id"], single.iloc[0]["slide_id"]
    broken = next(dl.glob(f"*/{broken_name}"))
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])   # an interrupted download
    table = write_subtable(rows, tmp_path / "tcga_luad_all_clean.csv.zip")
    out = "ghanet-out"

    seg = _ghanet("segment", str(dl), "--recursive", "--out", out, "--no-progress", cwd=tmp_path)
    assert seg.returncode == 1, seg.stdout + seg.stderr   # one failed slide, the others done
    text = " ".join((seg.stdout + seg.stderr).split())
    assert "truncated or incomplete" in text and slide_id_from_name(broken_name) in text
    coords = sorted(p.name.split(".")[0] for p in (tmp_path / out / "segment").glob("*.coords.h5"))
    assert coords == sorted(slide_id_from_name(n) for n in names if n != broken_name)

    ext = _ghanet("extract-features", str(dl), "--recursive", "--out", out, "--weights", "random", "--device", "cpu",
                  "--no-progress", cwd=tmp_path)
    assert ext.returncode == 1, ext.stdout + ext.stderr
    gen = _ghanet("preprocess-genomics", "--table", table.name, "--families", str(luad / "signatures.csv"),
                  "--folds", "2", "--de-method", "none", "--out", out, "--no-progress", cwd=tmp_path)
    assert gen.returncode == 0, gen.stdout + gen.stderr
    features = f"{out}/features/resnet50_trunc_256_random0"
    trn = _ghanet("train", "--features", features, "--genomics", f"{out}/genomics", "--out", out, "--epochs", "1",
                  "--dim", "32", "--no-progress", cwd=tmp_path)
    assert trn.returncode == 0, trn.stdout + trn.stderr
    pred = pd.read_csv(tmp_path / out / "train" / "ghanet" / "predictions.csv", dtype={"case_id": str})
    expected = set(rows["case_id"]) - {broken_case}
    assert set(pred["case_id"]) == expected and pred["risk"].notna().all()
    assert broken_case in " ".join((trn.stdout + trn.stderr).split())    # named as skipped

    pair = rows.groupby("case_id").filter(lambda g: len(g) == 2)
    two = pair.iloc[0]["case_id"]
    files = [str(next(dl.glob(f"*/{n}"))) for n in pair[pair["case_id"] == two]["slide_id"]]
    prd = _ghanet("predict", *files, "--case-id-from", "tcga", "--out", out, "--weights", "random", "--device",
                  "cpu", "--no-progress", cwd=tmp_path)
    assert prd.returncode == 0, prd.stdout + prd.stderr
    table = pd.read_csv(tmp_path / out / "predict" / "predictions.csv", dtype={"case_id": str})
    assert table["case_id"].tolist() == [two] and table["risk"].notna().all()
    assert sorted(table["slide_ids"].iloc[0].split(";")) == sorted(n.split(".")[0] for n in pair[pair["case_id"] == two]["slide_id"])
