"""Synthetic slides: OpenSlide metadata, determinism, physical tissue layout, phenotype effect."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from ghanet_pipeline.wsi.slide import Slide
from ghanet_pipeline.wsi.synthetic import tissue_fields, write_synthetic_slide


def test_openslide_reads_aperio_metadata(synthetic_slide_20x, synthetic_slide_40x):
    for path, mpp, power in [(synthetic_slide_20x, "0.5", "20"), (synthetic_slide_40x, "0.25", "40")]:
        with openslide.OpenSlide(str(path)) as osr:
            props = osr.properties
            assert props["openslide.vendor"] == "aperio"
            assert float(props["openslide.mpp-x"]) == float(mpp) == float(props["openslide.mpp-y"])
            assert props["openslide.objective-power"] == power
            # lower levels are real pyramid levels in the main IFD chain, 4x apart
            assert osr.level_count >= 2
            assert osr.level_downsamples[1] == pytest.approx(4.0)


@pytest.mark.parametrize("kind, vendor, has_mpp, has_power", [
    ("objective", "aperio", False, True),
    ("resolution", "generic-tiff", True, False),
    ("none", "generic-tiff", False, False),
])
def test_metadata_variants(make_synthetic_slide, kind, vendor, has_mpp, has_power):
    path = make_synthetic_slide(f"meta_{kind}.tif", 512, 512, metadata=kind)
    with openslide.OpenSlide(str(path)) as osr:
        props = osr.properties
        assert props["openslide.vendor"] == vendor
        assert ("openslide.mpp-x" in props) == has_mpp
        assert ("openslide.objective-power" in props) == has_power


def test_deterministic_from_seed(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.tif", 700, 500, seed=11, phenotype=0.4)
    b = write_synthetic_slide(tmp_path / "b.tif", 700, 500, seed=11, phenotype=0.4)
    c = write_synthetic_slide(tmp_path / "c.tif", 700, 500, seed=12, phenotype=0.4)
    with Slide(a) as sa, Slide(b) as sb, Slide(c) as sc:
        ra, rb, rc = (s.read_region(0, 0, 0, (700, 500)) for s in (sa, sb, sc))
    assert np.array_equal(ra, rb)
    assert np.abs(ra.astype(int) - rc.astype(int)).mean() > 3


def test_tissue_layout_is_physical():
    """20x and 40x of the same physical size get identical geometry fields."""
    f20 = tissue_fields(2048 * 0.5, 1536 * 0.5, phenotype=0.3, seed=3)
    f40 = tissue_fields(4096 * 0.25, 3072 * 0.25, phenotype=0.3, seed=3)
    assert np.array_equal(f20.tissue, f40.tissue) and np.array_equal(f20.dense, f40.dense)
    # tissue in blobs on glass: some tissue, not everywhere, the border is glass
    share = (f20.tissue > 0.5).mean()
    assert 0.05 < share < 0.8
    assert f20.tissue[0].max() == 0 and f20.tissue[:, 0].max() == 0


@pytest.mark.parametrize("phenotype", [0.0, 0.3, 0.7, 1.0])
def test_phenotype_is_share_of_dense_tissue(phenotype):
    f = tissue_fields(2000, 2000, phenotype=phenotype, seed=4)
    in_tissue = f.tissue > 0.5
    share = (f.dense[in_tissue] > 0.5).mean()
    assert share == pytest.approx(phenotype, abs=0.06)


def test_phenotype_changes_patch_colour(tmp_path):
    """Tissue patches of a high-phenotype slide are darker and more purple than of a low one."""
    stats = {}
    for ph in (0.0, 0.9):
        path = write_synthetic_slide(tmp_path / f"p{ph}.tif", 1536, 1536, seed=8, phenotype=ph)
        with Slide(path) as s:
            plan = s.plan(0.5, 256)
            patches = [s.read_patch(plan, x, y) for y in range(0, 1536, 256) for x in range(0, 1536, 256)]
        tissue = [p.astype(float) for p in patches if p.mean() < 225]
        assert len(tissue) >= 5
        mean_rgb = np.mean([p.reshape(-1, 3).mean(axis=0) for p in tissue], axis=0)
        dark_share = np.mean([(p.mean(axis=2) < 150).mean() for p in tissue])
        stats[ph] = (mean_rgb, dark_share)
    (rgb0, dark0), (rgb9, dark9) = stats[0.0], stats[0.9]
    assert rgb9.mean() < rgb0.mean() - 10          # darker
    assert rgb9[0] - rgb9[2] < rgb0[0] - rgb0[2]  # bluer relative to red (more haematoxylin)
    assert dark9 > 2 * dark0                      # many more dark nuclei pixels


def test_blank_slide_has_no_stain(tmp_path):
    path = write_synthetic_slide(tmp_path / "blank.tif", 512, 512, blank=True)
    with Slide(path) as s:
        arr = s.read_region(0, 0, 0, (512, 512))
    hsv_sat = arr.max(axis=2).astype(int) - arr.min(axis=2)
    assert hsv_sat.max() < 10 and arr.min() > 230


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="phenotype"):
        write_synthetic_slide(tmp_path / "x.tif", 100, 100, phenotype=1.5)
    with pytest.raises(ValueError, match="metadata"):
        write_synthetic_slide(tmp_path / "x.tif", 100, 100, metadata="philips")
    assert not (tmp_path / "x.tif").exists()


def test_cli_synth_slide(tmp_path):
    from click.testing import CliRunner

    from ghanet_pipeline.cli import cli

    out = tmp_path / "cli.svs"
    res = CliRunner().invoke(cli, ["synth", "slide", str(out), "--size", "800", "600", "--mpp", "0.25",
                                   "--phenotype", "0.3", "--seed", "1"])
    assert res.exit_code == 0, res.output
    with Slide(out) as s:
        assert s.dimensions == (800, 600) and s.mpp == 0.25
    res = CliRunner().invoke(cli, ["synth", "slide", str(tmp_path / "n.tif"), "--size", "300", "300",
                                   "--no-metadata"])
    assert res.exit_code == 0, res.output
    with openslide.OpenSlide(str(tmp_path / "n.tif")) as osr:
        assert "openslide.mpp-x" not in osr.properties


@pytest.mark.parametrize("name", ["table.txt", "../escape.csv", "sub/t.csv", ".csv"])
def test_cli_synth_cohort_refuses_bad_table_name(tmp_path, name):
    from click.testing import CliRunner

    from ghanet_pipeline.cli import cli

    res = CliRunner().invoke(cli, ["synth", "cohort", str(tmp_path / "c"), "--cases", "4", "--table-name", name])
    assert res.exit_code == 2 and "plain file name ending in .csv or .csv.zip" in " ".join(res.output.split())
    assert not (tmp_path / "c").exists() and not (tmp_path / "escape.csv").exists()
