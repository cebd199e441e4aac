"""The distillation experiment on the controlled cohort (``distill_cohort``): four arms, same folds.

One *replicate* (a seed) draws a cohort with that seed, runs ``preprocess-genomics`` on it (5 folds,
seeded) and trains, with the library's own ``train_cv`` as a user's run would:

- ``ghanet``: G-HANet as configured (distillation weight ``alpha`` 0.3, the paper's);
- ``nodistill``: the same with ``alpha = 0`` (no gene reconstruction loss; same network, same folds);
- ``abmil``: the slide-only ABMIL baseline;
- ``shuffled``: G-HANet trained on gene targets permuted across cases (within the training cases and
  within the validation cases of each fold; genes selected and scaled as for ``ghanet``): the genes
  are real expression profiles, but of another case. If distillation helps through the case's own
  genes, this control must not beat ``nodistill``.

Per arm and fold it scores the fold's model on its validation cases (``c_index``: Harrell's, on the
observed censored labels, what ``train`` reports; ``c_latent``: concordance with the hidden phenotype;
``planted_spearman``, G-HANet arms: mean over planted genes of the Spearman across validation cases of
reconstructed vs true expression) and on an external test cohort of the same design, 400 cases by
default (``c_test``: Harrell's c-index on its observed censored labels; ``c_test_latent``; and
``attention_auc``: mean over test cases of the AUC of the model's patch weights against the
planted-patch mask). A validation fold holds about 12 cases and 4 events, so its c-index swings by
+-0.15 between folds; the test cohort measures the same fold model on about 120 events.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .distill_cohort import DistillCohort, DistillCohortSpec, TestCohort, make_distill_cohort, make_test_cohort


@dataclass(frozen=True)
class Arm:
    """One model of the comparison: ``model`` name, distillation weight (None = TrainConfig's), targets
    permuted across cases or not."""

    model: str
    alpha: float | None = None
    shuffled_targets: bool = False


ARMS: dict[str, Arm] = {
    "ghanet": Arm("ghanet"),
    "nodistill": Arm("ghanet", alpha=0.0),
    "abmil": Arm("abmil"),
    "shuffled": Arm("ghanet", shuffled_targets=True),
}


def shuffle_targets(genomics_dir: Path, dest: Path, seed: int) -> Path:
    """Copy ``genomics_dir`` to ``dest`` with every fold's targets permuted across cases (training cases
    among themselves, validation cases among themselves; seeded). Returns ``dest``."""
    import pandas as pd

    from ..genomics import list_folds
    from ..genomics.targets import read_targets, write_targets

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(genomics_dir, dest)
    for k in list_folds(dest):
        path = dest / f"fold_{k}" / "targets.h5"
        case_ids, families, mats, attrs = read_targets(path)
        split = pd.read_csv(dest / f"fold_{k}" / "labels.csv", dtype={"case_id": str}).set_index("case_id")["split"]
        rng = np.random.default_rng([seed, k, 41])
        order = np.arange(len(case_ids))
        for part in ("train", "val"):
            idx = np.array([i for i, c in enumerate(case_ids) if split.get(c) == part], dtype=int)
            order[idx] = idx[rng.permutation(len(idx))]
        write_targets(path, case_ids, families, [m[order] for m in mats], attrs={**attrs, "shuffled_seed": seed})
    return dest


def patch_weights(model: Any, out: Mapping[str, Any]) -> np.ndarray:
    """Per-patch weights (N,) the survival branch pools with: ABMIL's attention; for G-HANet the mean
    over families of the hyper-attention weights ``(genomic + morphology) / 2``."""
    from ..models.ghanet import genomic_weights

    w = out["w_mor"].reshape(-1)
    if out.get("assoc") is None:
        return w.cpu().numpy()
    cfg = model.config
    gen = genomic_weights(out["assoc"], cfg["topk"], cfg.get("topk_rule", "ceil")).mean(dim=0)
    return ((gen + w) / 2).cpu().numpy()


def mask_auc(scores: np.ndarray, mask: np.ndarray) -> float | None:
    """AUC of ``scores`` for the boolean ``mask`` (ties count half); None without both classes."""
    from scipy.stats import rankdata

    n1, n0 = int(mask.sum()), int((~mask).sum())
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[mask].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def score_fold(fold_dir: Path, cohort: DistillCohort, test: TestCohort) -> dict[str, float | None]:
    """Scores of one trained fold: on its validation cases the latent c-index and the planted-gene
    Spearman; on the external ``test`` cohort the c-index (observed labels), the latent c-index and
    the attention AUC."""
    import pandas as pd
    import torch

    from ..evaluation.metrics import concordance_index
    from ..models import load_checkpoint

    pred = pd.read_csv(fold_dir / "predictions.csv", dtype={"case_id": str})
    pheno = cohort.phenotype
    c_latent = concordance_index(1.0 - pred["case_id"].map(pheno).to_numpy(), np.ones(len(pred)),
                                 pred["risk"].to_numpy(), what=f"{fold_dir} latent")
    model, _ = load_checkpoint(fold_dir)
    risks, aucs = [], []
    with torch.no_grad():
        for x, mask in zip(test.features, test.masks, strict=True):
            out = model(torch.from_numpy(x))
            risks.append(float(out["risk"].reshape(-1)[0]))
            auc = mask_auc(patch_weights(model, out), mask)
            if auc is not None:
                aucs.append(auc)
    planted_sp = None
    genes_csv = fold_dir / "gene_spearman.csv"
    if genes_csv.is_file():
        genes = pd.read_csv(genes_csv)
        base = genes["gene"].str.replace(r"_(rnaseq|cnv|mut)$", "", regex=True)
        sel = genes[base.isin(cohort.cohort.planted_genes) & genes["gene"].str.endswith("_rnaseq")]["spearman"].dropna()
        planted_sp = float(sel.mean()) if len(sel) else None
    return {"c_latent": c_latent,
            "c_test": concordance_index(test.time, test.event, risks, what="test cohort"),
            "c_test_latent": concordance_index(1.0 - test.phenotype, np.ones(len(risks)), risks, what="test latent"),
            "attention_auc": float(np.mean(aucs)) if aucs else None, "planted_spearman": planted_sp}


def run_replicate(spec: DistillCohortSpec, seed: int, work: Path, train_options: Mapping[str, Any],
                  arms: Iterable[str] = tuple(ARMS), folds: int = 5, n_test: int = 400,
                  log: Any = print, genomics_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Draw the cohort of ``seed`` (and its external test cohort of ``n_test`` cases), run every arm on
    the same folds; one row per (arm, fold). ``genomics_options``: GenomicsConfig overrides (e.g.
    ``{"de_method": "none"}``: every gene a target, no per-fold selection)."""
    import time

    from ..core.errors import InputError
    from ..genomics.config import GenomicsConfig
    from ..genomics.pipeline import preprocess_genomics
    from ..training.config import TrainConfig
    from ..training.cv import train_cv

    spec = replace(spec, seed=seed)
    cohort = make_distill_cohort(spec, work / "cohort")
    test = make_test_cohort(spec, n_test)
    gres = preprocess_genomics(GenomicsConfig(table=str(cohort.table), families=str(cohort.families), folds=folds,
                                              seed=seed, **dict(genomics_options or {})), work)
    failed = [f"{r.item}: {r.message}" for r in gres.results if r.status == "failed"]
    if failed:
        raise InputError(f"preprocess-genomics failed on the cohort of seed {seed} ({spec.n_cases} cases, censoring "
                         f"{spec.censoring}): {'; '.join(failed)}; use more cases, less censoring or fewer folds")
    roots = {False: work / "genomics"}
    rows: list[dict[str, Any]] = []
    for name in arms:
        arm = ARMS[name]
        if arm.shuffled_targets and True not in roots:
            roots[True] = shuffle_targets(work / "genomics", work / "shuffled" / "genomics", seed)
        over = dict(train_options)
        if arm.alpha is not None:
            over["alpha"] = arm.alpha
        cfg = TrainConfig(model=arm.model, seed=seed, device="cpu", **over)
        t0 = time.perf_counter()
        res = train_cv(cohort.features, roots[arm.shuffled_targets], work, cfg, run_name=name, resume=True)
        for k, c in sorted((res.metrics or {}).get("c_index_per_fold", {}).items()):
            rows.append({"arm": name, "seed": seed, "fold": int(k), "c_index": c,
                         **score_fold(res.run_dir / f"fold_{k}", cohort, test)})
        log(f"  seed {seed} {name}: c-index {np.nanmean([r['c_index'] or np.nan for r in rows if r['arm'] == name]):.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return rows


#: the per-fold scores of a row, and what the summary calls them
SCORES = ("c_test", "c_index", "c_latent", "c_test_latent", "attention_auc", "planted_spearman")
#: the paired differences of the main result (``a - b``)
CONTRASTS = {"ghanet_minus_nodistill": ("ghanet", "nodistill"), "ghanet_minus_abmil": ("ghanet", "abmil"),
             "shuffled_minus_nodistill": ("shuffled", "nodistill")}


def replicate_difference(rows: Sequence[Mapping[str, Any]], a: str, b: str, key: str = "c_test",
                         level: float = 0.95) -> dict[str, Any]:
    """``a - b`` averaged per seed (over its folds), then the t-interval over the seeds: the conservative
    view, since the folds of one seed share its cohort and its test cohort."""
    from ..evaluation.paired import paired_difference, t_interval

    seeds = sorted({r["seed"] for r in rows})
    means = []
    for s in seeds:
        d = paired_difference({r["fold"]: r.get(key) for r in rows if r["arm"] == a and r["seed"] == s},
                              {r["fold"]: r.get(key) for r in rows if r["arm"] == b and r["seed"] == s}, level)
        if d.n:
            means.append(d.mean)
    m, lo, hi = t_interval(means, level)
    return {"mean": m, "lo": lo, "hi": hi, "n": len(means), "seed_means": means}


def summarise(rows: Sequence[Mapping[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """Per-arm means with t-intervals and the paired differences (pairs = seed x fold).

    Top-level differences use ``c_test`` (c-index on the external test cohort's observed labels); the
    same differences on the validation folds' c-index are under ``cv_fold``, on the latent phenotype
    under ``latent``; ``replicates``: the test c-index differences over seed means (one value per seed).
    ``attention_auc`` holds each arm's mean AUC and ``ghanet_minus_abmil``.
    """
    from ..evaluation.paired import paired_difference, t_interval

    def by(arm: str, key: str) -> dict[tuple[int, int], float | None]:
        return {(r["seed"], r["fold"]): r.get(key) for r in rows if r["arm"] == arm}

    present = list(dict.fromkeys(r["arm"] for r in rows))
    arms: dict[str, Any] = {}
    for a in present:
        arms[a] = {}
        for key in SCORES:
            vals = [v for v in by(a, key).values() if v is not None and np.isfinite(v)]
            if vals:
                m, lo, hi = t_interval(vals, level)
                arms[a][key] = {"mean": m, "lo": lo, "hi": hi, "n": len(vals)}

    def diffs(key: str) -> dict[str, Any]:
        return {name: paired_difference(by(a, key), by(b, key), level).as_dict()
                for name, (a, b) in CONTRASTS.items() if a in present and b in present}

    main = diffs("c_test")
    out: dict[str, Any] = {"pairs": max((d["n"] for d in main.values()), default=0), **main,
                           "cv_fold": diffs("c_index"), "latent": diffs("c_test_latent"),
                           "replicates": {name: replicate_difference(rows, a, b, "c_test", level)
                                          for name, (a, b) in CONTRASTS.items() if a in present and b in present},
                           "attention_auc": {a: arms[a].get("attention_auc", {}).get("mean") for a in present},
                           "arms": arms}
    if "ghanet" in present and "abmil" in present:
        out["attention_auc"]["ghanet_minus_abmil"] = paired_difference(
            by("ghanet", "attention_auc"), by("abmil", "attention_auc"), level).as_dict()
    return out
