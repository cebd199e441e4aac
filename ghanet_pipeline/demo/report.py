"""What the demo reads back from the stages' outputs: c-index rows, held-out risks against the hidden
phenotype, the feature diversity of the bags and the reconstruction of the planted genes.

Pure functions over files the stages wrote; no printing (the CLI renders :class:`demo.run.DemoResult`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def collect_metrics(run_dir: Path, model: str) -> dict[str, Any] | None:
    """One c-index row of a training run (``metrics.json``), None when the run wrote none."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    row = {"model": model, "run_dir": run_dir}
    for key in ("c_index_mean", "c_index_std", "c_index_pooled", "logrank_p", "c_index_per_fold"):
        if key in m:
            row[key] = m[key]
    return row


def collect_predictions(pred_csv: Path, truth_manifest: Path) -> list[dict[str, Any]]:
    """Held-out predictions joined with the hidden truth of the manifest (phenotype, survival)."""
    truth: dict[str, dict[str, str]] = {}
    for r in read_csv(truth_manifest):
        truth.setdefault(r["case_id"], r)
    rows = []
    for r in read_csv(pred_csv):
        cid = r.get("case_id", "")
        t = truth.get(cid, {})
        row: dict[str, Any] = {"case_id": cid, "status": r.get("status", "")}
        for key in ("risk", "risk_group", "risk_std"):
            if r.get(key) not in (None, ""):
                row[key] = float(r[key]) if key != "risk_group" else r[key]
        for key in ("phenotype", "survival_months", "censorship"):
            if t.get(key) not in (None, ""):
                row[key] = float(t[key])
        rows.append(row)
    return rows


def risk_summary(risks: list[dict[str, Any]]) -> dict[str, float | None]:
    """``span`` (max - min risk) and ``spearman`` (risk vs hidden phenotype) of the held-out cases."""
    from scipy.stats import spearmanr

    pairs = [(r["risk"], r["phenotype"]) for r in risks if "risk" in r and "phenotype" in r]
    if len(pairs) < 2:
        return {"span": None, "spearman": None}
    risk, pheno = np.asarray(pairs, dtype=float).T
    rho = float(spearmanr(risk, pheno).statistic) if np.ptp(risk) > 0 and np.ptp(pheno) > 0 else None
    return {"span": float(np.ptp(risk)), "spearman": rho}


def bag_cosine(features_dir: Path, max_rows: int = 2000, seed: int = 0) -> float | None:
    """Mean pairwise cosine similarity between patch features of all bags in ``features_dir`` (a seeded
    sample of ``max_rows`` patches); None when there are no bags."""
    from ..features.bags import read_bag
    from ..features.calibrate import mean_pairwise_cosine

    feats = [read_bag(p).features for p in sorted(Path(features_dir).glob("*.h5"))]
    feats = [f for f in feats if len(f)]
    if not feats:
        return None
    return mean_pairwise_cosine(np.concatenate(feats), max_rows=max_rows, seed=seed)


def gene_table(run_dir: Path) -> Any:
    """Per-gene Spearman of every finished fold of a G-HANet run: DataFrame ``fold, family, gene,
    spearman, n_cases`` (empty when the run has no ``gene_spearman.csv``)."""
    import pandas as pd

    frames = []
    for path in sorted(Path(run_dir).glob("fold_*/gene_spearman.csv")):
        df = pd.read_csv(path)
        df.insert(0, "fold", int(path.parent.name.split("_")[1]))
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["fold", "family", "gene", "spearman", "n_cases"])


def is_planted_feature(feature: str, planted: set[str]) -> bool:
    """True for the expression feature of a planted gene (``<gene>_rnaseq`` or the bare symbol)."""
    return feature in planted or (feature.endswith("_rnaseq") and feature[: -len("_rnaseq")] in planted)


def planted_summary(run_dir: Path, planted: Iterable[str]) -> dict[str, Any]:
    """Mean per-gene Spearman (across validation cases, averaged over folds) of planted vs other genes.

    Gene names in the table are features: ``TSG1_rnaseq`` (MCAT table) or ``TSG1`` (counts input). The
    phenotype drives the *expression* of the planted genes, so a feature is planted when it is the
    expression of a planted gene; their ``_cnv`` / ``_mut`` columns are noise like every other gene."""
    df = gene_table(run_dir)
    planted = set(planted)
    if df.empty:
        return {"planted_mean": None, "other_mean": None, "per_gene": {}}
    df = df[np.isfinite(df["spearman"].astype(float))]
    is_p = df["gene"].astype(str).map(lambda g: is_planted_feature(g, planted))
    per_gene = df[is_p].groupby("gene")["spearman"].mean().round(3).to_dict()
    return {"planted_mean": float(df[is_p]["spearman"].mean()) if is_p.any() else None,
            "other_mean": float(df[~is_p]["spearman"].mean()) if (~is_p).any() else None,
            "n_planted_features": int(df[is_p]["gene"].nunique()), "per_gene": per_gene}


def mark_planted(run_dir: Path, planted: Iterable[str]) -> Path | None:
    """Re-draw the run's gene-reconstruction figure (``spearman.png``) with the planted genes marked
    (the demo knows them; a real run does not). None when the run has no per-gene table."""
    from ..evaluation.plots import plot_gene_reconstruction

    df = gene_table(run_dir)
    if df.empty:
        return None
    import pandas as pd

    cases = [pd.read_csv(p) for p in sorted(Path(run_dir).glob("fold_*/case_spearman.csv"))]
    case = pd.concat(cases, ignore_index=True) if cases else None
    genes = {str(f): list(zip(sub["gene"].astype(str), sub["spearman"].astype(float), strict=True))
             for f, sub in df.groupby("family", sort=False)}
    per_case = ({str(f): sub["spearman"].tolist() for f, sub in case.groupby("family", sort=False)}
                if case is not None else {})
    planted = set(planted)
    marked = {g for pairs in genes.values() for g, _ in pairs if is_planted_feature(g, planted)}
    return plot_gene_reconstruction(genes, per_case, Path(run_dir) / "spearman.png", planted=marked,
                                    note="demo: planted genes (expression driven by the hidden phenotype) marked")
