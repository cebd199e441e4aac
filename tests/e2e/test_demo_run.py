"""The suite's one full `ghanet demo` run (default sizes: what `make demo` runs), shared by this module's tests:
every stage runs and prints its checks, and the outputs mean something (informative features, risks ordered
by the hidden phenotype, planted genes found, attention on the planted tissue). Marked ``slow``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ghanet_pipeline.demo.config import DemoConfig
from ghanet_pipeline.testing import package_env

pytestmark = pytest.mark.slow

#: the demo's sizes here (every stage, both models): smaller than `make demo`'s defaults to fit the suite's
#: time budget, large enough for every property below
CONFIG = DemoConfig(n_cases=24, n_holdout=4, folds=3, epochs=10, slide_px=1536)
ARGS = ["--cases", str(CONFIG.n_cases), "--holdout", str(CONFIG.n_holdout), "--folds", str(CONFIG.folds),
        "--epochs", str(CONFIG.epochs), "--slide-px", str(CONFIG.slide_px), "--models", ",".join(CONFIG.models)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`ghanet demo` with :data:`CONFIG`'s sizes, once: (its --out folder, its output text)."""
    out = tmp_path_factory.mktemp("full-demo") / "demo-out"
    res = subprocess.run([sys.executable, "-m", "ghanet_pipeline", "demo", "--out", str(out), *ARGS],
                         capture_output=True, text=True, timeout=3600, check=False, env=package_env())
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-5000:]
    return out, text


def test_demo_runs_every_stage_and_prints_its_checks(demo_run) -> None:
    """Every training and held-out slide has tissue patches; the demo prints its measured checks, the
    per-fold c-index of each fold, the held-out patients, the Kaplan-Meier figure it wrote and where its
    report is (one page per held-out slide)."""
    import h5py

    out, text = demo_run
    cfg = CONFIG
    man = pd.read_csv(out / "demo-data" / "manifest.csv")
    for sid in man.slide_id:  # segment ran on the training slides
        with h5py.File(out / "segment" / f"{sid}.coords.h5", "r") as f:
            assert len(f["coords"]) > 0, sid
    hold = pd.read_csv(out / "demo-data" / "holdout_manifest.csv")
    pred = pd.read_csv(out / "predict" / "predictions.csv")
    assert set(pred.case_id) == set(hold.case_id) and len(pred) == cfg.n_holdout
    assert np.isfinite(pred.risk).all() and (pred.patches > 0).all()  # predict segmented the held-out slides
    assert re.search(r"planted genes\s+mean Spearman\s+-?[0-9.]+", text), text[-3000:]
    assert "validation c-index" in text and all(f"fold {k}" in text for k in range(cfg.folds)), text[-3000:]
    assert "held-out patients" in text and all(c in text for c in hold.case_id), text[-3000:]
    for model in cfg.models:
        km = out / "train" / model / "km.png"
        assert km.is_file(), km
    assert str(out / "train" / cfg.models[0] / "km.png") in text.replace("\n", "")
    for r in hold.itertuples():
        assert (out / "predict" / "heatmaps" / r.case_id / f"{r.slide_id}_morphology.png").is_file()
    # the demo ends with the report and says where it is; every held-out slide has its page
    index = (out / "report" / "index.html").resolve()
    assert index.is_file() and str(index) in text.replace("\n", ""), text[-3000:]
    for sid in hold.slide_id:
        assert (out / "report" / "slides" / f"{sid}.html").is_file(), sid


def test_demo_outputs_mean_something(demo_run) -> None:
    """Informative features, held-out risks ordered by the hidden phenotype, planted genes found; the
    models beat chance (the shuffled-label control of the same training: tests/training/test_cv.py)."""
    from ghanet_pipeline.demo import report

    out, text = demo_run
    feats = next(d for d in (out / "features").iterdir() if d.is_dir())
    cos = report.bag_cosine(feats)
    # the demo prints the value it measured right after extraction (predict adds held-out bags later)
    printed = re.search(r"mean\s+pairwise\s+cosine\s+similarity\s+(-?[0-9.]+)", text)
    assert printed is not None and float(printed.group(1)) < 0.9, text[-2000:]
    assert cos < 0.9
    # held-out risks differ visibly and follow the hidden phenotype
    pred = pd.read_csv(out / "predict" / "predictions.csv")
    truth = pd.read_csv(out / "demo-data" / "holdout_manifest.csv").drop_duplicates("case_id")
    df = pred.merge(truth[["case_id", "phenotype"]], on="case_id")
    assert len(df) == CONFIG.n_holdout and np.ptp(df.risk) >= 0.1
    for a in df.itertuples():  # every pair whose phenotypes differ clearly is ranked the right way
        for b in df.itertuples():
            if a.phenotype > b.phenotype + 0.1:
                assert a.risk > b.risk, df
    # planted genes reconstructed across validation cases, the others not
    planted = json.loads((out / "demo-data" / "cohort.json").read_text())["planted_genes"]
    genes = report.planted_summary(out / "train" / "ghanet", planted)
    assert genes["planted_mean"] >= 0.5 and abs(genes["other_mean"]) < 0.15, genes
    assert "planted genes mean Spearman" in text
    for model in CONFIG.models:
        metrics = json.loads((out / "train" / model / "metrics.json").read_text())
        assert metrics["c_index_mean"] > 0.6, (model, metrics["c_index_per_fold"])


def test_demo_attention_is_lower_on_dense_tissue_on_every_mixed_slide(demo_run) -> None:
    """The QuPath file of each held-out slide: on every slide with both kinds of tissue (each the larger part of
    at least 15 % of the patches) the morphology attention falls as the dense dark-nuclei share of the patch
    rises (docs/demo.md), so the map outlines the planted tissue. Every such slide must show it, not just one;
    a slide with (almost) only one kind has nothing to order."""
    from scipy.stats import spearmanr

    from ghanet_pipeline.wsi.synthetic import dense_fraction, tissue_fields

    out, _ = demo_run
    cfg = CONFIG
    hold = pd.read_csv(out / "demo-data" / "holdout_manifest.csv")
    rhos = {}
    for r in hold.itertuples():
        path = out / "predict" / "heatmaps" / r.case_id / f"{r.slide_id}.geojson"
        fc = json.loads(path.read_text())
        feats = fc["features"]
        assert all(f["properties"]["objectType"] == "detection" for f in feats)
        size = fc["properties"]["patch_size_level0"]
        xy = np.array([f["geometry"]["coordinates"][0][0] for f in feats])
        att = np.array([f["properties"]["measurements"]["attention"] for f in feats])
        assert {k for k in feats[0]["properties"]["measurements"] if k.startswith("assoc_")} >= {
            "assoc_Tumor_Suppression", "assoc_Oncogenesis"}
        um = cfg.slide_px * 0.5
        dense = dense_fraction(tissue_fields(um, um, phenotype=float(r.phenotype), seed=int(r.slide_seed)), xy,
                               size, 0.5)
        mostly_dense = float((dense > 0.5).mean())
        if min(mostly_dense, 1 - mostly_dense) >= 0.15:  # both kinds of tissue, each in >= 15 % of the patches
            rhos[r.slide_id] = float(spearmanr(att, dense).statistic)
    assert len(rhos) >= 2, rhos
    assert all(rho <= -0.3 for rho in rhos.values()), rhos
