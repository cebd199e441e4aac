"""The synthetic demo (demo/run.py, limits.py, `ghanet demo`): the cohort it builds, the sizes it refuses up
front, the smallest sizes it accepts. The one full demo run is tests/e2e/test_demo_run.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ghanet_pipeline.core.errors import OptionValueError
from ghanet_pipeline.demo.config import DemoConfig
from ghanet_pipeline.demo.limits import MIN_CASES, MIN_SLIDE_PX, check_config
from ghanet_pipeline.demo.run import build_cohort, run_demo


def test_build_cohort_writes_slides_carrying_the_phenotype_and_a_separate_holdout(tmp_path: Path) -> None:
    from scipy.stats import spearmanr

    from ghanet_pipeline.wsi.slide import Slide

    cfg = DemoConfig(n_cases=10, n_holdout=2, slide_px=768, seed=1)
    paths = build_cohort(tmp_path, cfg)
    man = pd.read_csv(paths["manifest"])
    hold = pd.read_csv(paths["holdout_manifest"])
    table = pd.read_csv(paths["table"])
    clinical = pd.read_csv(paths["clinical"])
    assert list(man.slide_id) == list(clinical.slide_id)  # one slide per clinical row
    assert man.case_id.nunique() == 10 and len(hold) == 2
    assert not set(hold.case_id) & set(table.case_id)  # held-out patients have no genomics
    assert not set(hold.slide_id) & set(man.slide_id)
    darkness, pheno = [], []
    for r in pd.concat([man, hold]).itertuples():
        with Slide(tmp_path / r.path) as s:
            assert s.dimensions == (768, 768) and abs(s.mpp - 0.5) < 1e-6
            thumb, _ = s.thumbnail(8)
        tissue = thumb.min(axis=2) < 200  # not white glass
        darkness.append(255 - thumb[tissue].mean())
        pheno.append(r.phenotype)
    # the planted signal reaches the pixels: more dense dark-nuclei tissue -> darker tissue
    assert spearmanr(pheno, darkness)[0] > 0.7
    # the Snakemake config for the same cohort points at these files and keeps outputs apart
    import yaml

    wf = yaml.safe_load(paths["workflow_config"].read_text())
    assert Path(wf["manifest"]) == paths["manifest"].resolve()
    assert Path(wf["genomics_table"]) == paths["table"].resolve()
    assert Path(wf["predict_manifest"]) == paths["holdout_manifest"].resolve()
    assert Path(wf["out"]).parent == tmp_path.resolve().parent and wf["folds"] == cfg.folds
    assert wf["extract"]["weights"] == "random" and "--dim" in wf["train"]["extra"]
    # the planted genes are listed by name (the truth the gene report is checked against)
    import json

    from ghanet_pipeline.demo.cohort import make_cohort

    stamp = json.loads((tmp_path / "cohort.json").read_text())
    truth = make_cohort(n_cases=10, seed=1)
    assert stamp["planted_genes"] == sorted(truth.planted_genes) and len(stamp["planted_genes"]) == 12
    assert set(man.columns) >= {"phenotype", "slide_seed"}
    # a second call reuses the slides (no rewrite)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "slides").iterdir()}
    build_cohort(tmp_path, cfg)
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "slides").iterdir()}


@pytest.fixture(scope="module")
def smallest_demo(tmp_path_factory: pytest.TempPathFactory):
    """``run_demo`` at the smallest sizes the CLI accepts (11 cases + 1 held-out, 2 folds, MIN_SLIDE_PX, seed
    0) whose stage commands are replaced by a stand-in that exits 3 for calibrate-encoder and 0 otherwise: the
    cohort is built, no stage runs. (result, config, names of the stages the stand-in was asked to run)."""
    import ghanet_pipeline.demo.run as demo

    ran: list[str] = []

    def fake_run(stage, cmd, stream, env):
        ran.append(stage)
        return demo.StageRun(stage=stage, command=cmd, returncode=3 if stage == "calibrate-encoder" else 0,
                             seconds=0.0)

    cfg = DemoConfig(n_cases=11, n_holdout=1, folds=2, slide_px=MIN_SLIDE_PX)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "_run", fake_run)
        return run_demo(tmp_path_factory.mktemp("smallest-demo"), cfg), cfg, ran


@pytest.mark.slow  # builds the 12 slides of 1536 px of the smallest demo
def test_a_failing_stage_stops_the_stages_that_need_it(smallest_demo) -> None:
    res, _, ran = smallest_demo
    assert ran == ["segment", "calibrate-encoder"]
    assert not res.ok and [s.stage for s in res.stages] == ["cohort", "segment", "calibrate-encoder"]
    assert res.stages[-1].returncode == 3


@pytest.mark.slow
def test_smallest_accepted_slides_all_have_tissue_patches(smallest_demo, tmp_path: Path) -> None:
    """At the smallest accepted sizes every training and held-out slide gets tissue patches under
    `segment`'s defaults (what the later stages need)."""
    from ghanet_pipeline.wsi.inputs import SlideSpec
    from ghanet_pipeline.wsi.segment import SegmentParams, load_coords, segment_paths, segment_slide

    res, cfg, _ = smallest_demo
    check_config(cfg)  # accepted
    data = res.data_dir
    slides = pd.concat([pd.read_csv(data / "manifest.csv"), pd.read_csv(data / "holdout_manifest.csv")])
    assert len(slides) >= cfg.n_cases + cfg.n_holdout
    for r in slides.itertuples():
        seg = segment_slide(SlideSpec(r.slide_id, data / r.path, r.case_id), tmp_path, SegmentParams())
        assert seg.status == "done", seg.message
        coords, _ = load_coords(segment_paths(tmp_path, r.slide_id)["coords"])
        assert len(coords) > 0, r.slide_id


def _demo_cli(*args: str):
    from click.testing import CliRunner

    from ghanet_pipeline.cli import cli

    return CliRunner().invoke(cli, ["demo", *args])


def test_too_small_sizes_are_usage_errors_before_anything_is_written(tmp_path: Path) -> None:
    """The bug: `--cases 8 --folds 2 --slide-px 512` were accepted and failed in preprocess-genomics."""
    out = tmp_path / "demo"
    common = ["--holdout", "1", "--epochs", "1", "--out", str(out)]
    res = _demo_cli("--cases", "8", "--folds", "2", "--slide-px", str(MIN_SLIDE_PX), *common)
    assert res.exit_code == 2, res.output
    # names the option, why (the per-fold risk groups of genomics) and the smallest value that works
    assert "Invalid value for '--cases'" in res.output and "fold 0: 1 high-risk and 1 low-risk" in res.output
    assert "The smallest --cases above 8 that works with --folds 2 --seed 0 is 11" in res.output
    res = _demo_cli("--cases", "11", "--folds", "2", "--slide-px", str(MIN_SLIDE_PX // 2), *common)
    assert res.exit_code == 2 and "'--slide-px'" in res.output and str(MIN_SLIDE_PX) in res.output, res.output
    res = _demo_cli("--cases", "9", "--folds", "10", *common)
    assert res.exit_code == 2 and "more folds (10) than cases" in res.output, res.output
    assert not out.exists()  # nothing written
    # the library refuses the same sizes (and sizes the CLI's ranges keep out) before writing
    for bad, option in ((DemoConfig(n_cases=8, folds=2, slide_px=MIN_SLIDE_PX), "--cases"),
                        (DemoConfig(n_cases=MIN_CASES - 1), "--cases"), (DemoConfig(slide_px=512), "--slide-px")):
        with pytest.raises(OptionValueError) as err:
            run_demo(out, bad)
        assert err.value.option == option
    assert not out.exists()


def test_fold_check_agrees_with_preprocess_genomics(tmp_path: Path) -> None:
    """check_config's fold check is exact: it passes where the real stage succeeds and fails where it fails."""
    from ghanet_pipeline.demo.cohort import make_cohort, write_cohort_tables
    from ghanet_pipeline.genomics.config import GenomicsConfig
    from ghanet_pipeline.genomics.pipeline import preprocess_genomics

    seen = set()
    for n, folds, seed in ((8, 2, 0), (11, 2, 0), (10, 3, 0), (9, 3, 0), (10, 2, 1), (11, 2, 1)):
        d = tmp_path / f"{n}-{folds}-{seed}"
        paths = write_cohort_tables(make_cohort(n_cases=n, seed=seed), d, table_name="genomics_table.csv")
        res = preprocess_genomics(GenomicsConfig(table=str(paths["table"]), families=str(paths["families"]),
                                                 folds=folds), d / "out")
        stage_ok = all(r.status != "failed" for r in res.results)
        try:
            check_config(DemoConfig(n_cases=n, folds=folds, seed=seed))
            check_ok = True
        except OptionValueError:
            check_ok = False
        assert check_ok == stage_ok, (n, folds, seed, [r.message for r in res.results])
        seen.add(stage_ok)
    assert seen == {True, False}  # both outcomes exercised
