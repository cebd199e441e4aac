"""Slide inputs (wsi/inputs.py): manifests, files/folders/globs, um/px overrides, shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from ghanet_pipeline.core.errors import ConfigError, InputError
from ghanet_pipeline.wsi.inputs import collect_slides, parse_shard, read_manifest, take_shard, tcga_case_id


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_read_manifest_paths_case_ids_mpp_extra(tmp_path):
    man = write(tmp_path / "cohort" / "m.csv",
                "slide_id,path,case_id,mpp,site\n"
                "TCGA-AA-0001-01Z-00-DX1,slides/a.svs,,0.25,x\n"
                "s2,/abs/b.svs,P2,,y\n")
    specs = read_manifest(man)
    assert [s.slide_id for s in specs] == ["TCGA-AA-0001-01Z-00-DX1", "s2"]
    assert specs[0].path == tmp_path / "cohort" / "slides" / "a.svs"  # relative to the manifest
    assert specs[1].path == Path("/abs/b.svs")
    assert specs[0].case_id == "TCGA-AA-0001-01Z-00-DX1" and specs[1].case_id == "P2"
    assert (specs[0].mpp, specs[1].mpp) == (0.25, None)
    assert specs[0].extra == {"site": "x"}
    assert read_manifest(man, case_id_from="tcga")[0].case_id == "TCGA-AA-0001"
    assert tcga_case_id("TCGA-AA-0001-01Z-00-DX1") == "TCGA-AA-0001"


@pytest.mark.parametrize("text, match", [
    ("id,file\na,b.svs\n", r"missing column\(s\) slide_id, path"),
    ("slide_id,path\n", "lists no slides"),
    ("slide_id,path\na,x.svs\nb,y.svs\na,z.svs\n", r"row 4: slide_id 'a' already used in row 2"),
    ("slide_id,path\n,x.svs\n", "row 2: empty slide_id"),
    ("slide_id,path\na,\n", r"row 2 \(slide 'a'\): empty path"),
    ("slide_id,path,mpp\na,x.svs,fast\n", r"row 2, column mpp: 'fast' is not a positive number"),
    ("slide_id,path,mpp\na,x.svs,-0.5\n", r"row 2, column mpp"),
    ("slide_id,path\n..,x.svs\n", "cannot be used as a file name"),
    ("slide_id,path\na/b,x.svs\na_b,y.svs\n", "both become file name 'a_b'"),
    ("slide_id,path\na,x.svs\nb,y,z.svs\n", r"row 3: 3 fields but the header has 2; quote values"),
    ("slide_id,path,slide_id\na,x.svs,b\n", "slide_id appear more than once in the header"),
])
def test_manifest_errors_name_the_row(tmp_path, text, match):
    man = write(tmp_path / "m.csv", text)
    with pytest.raises(InputError, match=match):
        read_manifest(man)


def test_manifest_short_rows_blank_lines_and_bom(tmp_path):
    man = tmp_path / "m.csv"
    man.write_bytes("\ufeffslide_id,path,case_id\n a , x.svs \n\nb,y.svs,P\n".encode("utf-8"))
    specs = read_manifest(man)
    assert [(s.slide_id, s.path.name, s.case_id) for s in specs] == [("a", "x.svs", "a"), ("b", "y.svs", "P")]


def test_manifest_not_utf8(tmp_path):
    man = tmp_path / "m.csv"
    man.write_bytes("slide_id,path\nm\u00e9,x.svs\n".encode("utf-16"))
    with pytest.raises(InputError, match=r"m.csv is not UTF-8 text.*save it as UTF-8"):
        read_manifest(man)


def test_manifest_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")


# -- collect_slides -------------------------------------------------------------------------------------------
def test_collect_files_dirs_globs(tmp_path):
    for rel in ["d/a.svs", "d/b.tif", "d/notes.txt", "d/sub/c.ndpi"]:
        write(tmp_path / rel, "x")
    flat = collect_slides([tmp_path / "d"])
    assert [s.slide_id for s in flat] == ["a", "b"]
    deep = collect_slides([tmp_path / "d"], recursive=True)
    assert sorted(s.slide_id for s in deep) == ["a", "b", "c"]
    globbed = collect_slides([str(tmp_path / "d" / "*.svs")])
    assert [s.slide_id for s in globbed] == ["a"]
    # a missing file is kept: it fails later as that slide's own error
    missing = collect_slides([tmp_path / "gone.svs"])
    assert missing[0].slide_id == "gone" and not missing[0].path.exists()
    # multi-dot names: the slide id stops at the first dot
    write(tmp_path / "e" / "TCGA-X.svs.tiff", "x")
    assert collect_slides([tmp_path / "e"])[0].slide_id == "TCGA-X"


def test_collect_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / "sub" / "x.svs", "x")
    with pytest.raises(InputError, match="holds no slide files.*--recursive"):
        collect_slides([tmp_path / "empty"])
    with pytest.raises(InputError, match="matches no files"):
        collect_slides([str(tmp_path / "*.ndpi")])
    with pytest.raises(ConfigError, match="no slides given"):
        collect_slides([])
    with pytest.raises(ConfigError, match="--case-id-from"):
        collect_slides([tmp_path / "a.svs"], case_id_from="barcode")
    write(tmp_path / "one" / "s.svs", "x")
    write(tmp_path / "two" / "s.svs", "x")
    with pytest.raises(InputError, match="'s' is used twice"):
        collect_slides([tmp_path / "one", tmp_path / "two"])


def test_collect_mpp_override_and_manifest_precedence(tmp_path):
    man = write(tmp_path / "m.csv", "slide_id,path,mpp\nm1,a.svs,0.25\nm2,b.svs,\n")
    specs = {s.slide_id: s for s in collect_slides([tmp_path / "c.svs"], manifest=man, mpp=0.5)}
    assert specs["m1"].mpp == 0.25  # the manifest wins
    assert specs["m2"].mpp == 0.5 and specs["c"].mpp == 0.5
    assert collect_slides([tmp_path / "c.svs"], case_id_from="tcga")[0].case_id == "c"


def test_shards():
    assert parse_shard(None) is None
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1-3", "-1/2", "0/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    items = list(range(10))
    parts = [take_shard(items, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7]
    assert take_shard(items, None) == items
