"""A small synthetic cohort with a known answer: clinical table, MCAT-style genomics table, raw counts
and gene families, all driven by one hidden per-case ``phenotype`` in [0, 1].

- Survival: exponential times with log-hazard ``beta * phenotype`` (higher phenotype = earlier death),
  independent exponential censoring (about 35 % censored) and administrative censoring at
  ``max_follow_up_months``. With the defaults the oracle c-index of ``phenotype`` is about 0.8.
- Genomics: per gene a baseline mean count; the ``planted`` genes (a few genes in only some families)
  have log2 mean ``log2(base) + effect_log2 * (phenotype - 0.5)``; every other gene is noise.
  ``counts`` are negative-binomial integers (genes x samples). The MCAT table holds
  ``<GENE>_rnaseq`` (z-scored log2 normalised counts, like the MCAT/cBioPortal tables),
  ``<GENE>_cnv`` (integers -2..2, noise) and ``<GENE>_mut`` (0/1, noise) columns.
- ``families``: the six functional families of the paper (token order), columns of unequal length,
  a few genes shared between families and a few listed genes absent from the data (as on real tables).

The slides themselves are written elsewhere (``synthetic.write_synthetic_slide(..., phenotype=...)``),
one per row of ``clinical``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.files import atomic_path

#: the paper's six families, in token order
FAMILY_NAMES: tuple[str, ...] = ("Tumor Suppression", "Oncogenesis", "Protein Kinases",
                                 "Cellular Differentiation", "Transcription", "Cytokines and Growth")
_PREFIX = {"Tumor Suppression": "TSG", "Oncogenesis": "ONC", "Protein Kinases": "PKN",
           "Cellular Differentiation": "CDF", "Transcription": "TXN", "Cytokines and Growth": "CYT"}
#: families that carry planted genes by default (the others are pure noise)
DEFAULT_PLANTED_FAMILIES: tuple[str, ...] = ("Tumor Suppression", "Oncogenesis", "Cytokines and Growth")


@dataclass
class SyntheticCohort:
    """Tables of one synthetic cohort (see module docstring).

    ``clinical``: one row per slide: case_id, slide_id, survival_months, censorship (1 = censored),
    phenotype. ``table``: MCAT-style, one row per slide. ``counts``: raw integer counts, genes x cases
    (index = gene symbol, columns = case ids). ``families``: one column per family (padded with NaN).
    ``planted``: family -> genes whose expression follows the phenotype. ``genes``: all gene symbols
    present in the data.
    """

    clinical: pd.DataFrame
    table: pd.DataFrame
    counts: pd.DataFrame
    families: pd.DataFrame
    planted: dict[str, list[str]]
    genes: list[str]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def cases(self) -> pd.DataFrame:
        """One row per case (case_id index): survival_months, censorship, phenotype."""
        return (self.clinical.drop_duplicates("case_id").set_index("case_id")
                [["survival_months", "censorship", "phenotype"]])

    @property
    def planted_genes(self) -> set[str]:
        return {g for genes in self.planted.values() for g in genes}


def _survival(rng: np.random.Generator, n_cases: int, beta: float, censor_fraction: float,
              baseline_median_months: float, max_follow_up_months: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phenotype in [0, 1], survival_months, censorship) per case: exponential event times whose log
    hazard rises by ``beta`` over the phenotype range, independent exponential censoring."""
    phenotype = rng.uniform(0.0, 1.0, n_cases)
    base_rate = np.log(2.0) / baseline_median_months          # median time at phenotype 0.5
    rate = base_rate * np.exp(beta * (phenotype - 0.5))
    event_t = rng.exponential(1.0 / rate)
    # independent exponential censoring with a rate giving about censor_fraction censored overall
    # (for exponential event and censoring times P(censored) = c / (c + rate), solved on the mean rate)
    c_rate = censor_fraction / max(1e-9, 1.0 - censor_fraction) * float(np.median(rate))
    # censor_fraction 0: only the end of follow-up censors
    censor_t = (np.minimum(rng.exponential(1.0 / c_rate, n_cases), max_follow_up_months) if c_rate > 0
                else np.full(n_cases, float(max_follow_up_months)))
    time = np.minimum(event_t, censor_t)
    return phenotype, np.round(np.maximum(time, 0.1), 2), (censor_t < event_t).astype(int)


def _gene_families(rng: np.random.Generator, genes_per_family: tuple[int, int], planted_families: tuple[str, ...],
                   n_planted_per_family: int, n_noise_genes: int, n_missing_listed: int
                   ) -> tuple[dict[str, list[str]], list[str], dict[str, list[str]]]:
    """(family -> listed genes, genes present in the data, family -> planted genes)."""
    fam_genes: dict[str, list[str]] = {}
    for name in FAMILY_NAMES:
        n = int(rng.integers(genes_per_family[0], genes_per_family[1] + 1))
        fam_genes[name] = [f"{_PREFIX[name]}{j + 1}" for j in range(n)]
    # overlap: a few protein kinases also listed under oncogenesis, a few TFs under differentiation
    fam_genes["Oncogenesis"] += fam_genes["Protein Kinases"][:3]
    fam_genes["Cellular Differentiation"] += fam_genes["Transcription"][:2]
    all_listed = sorted({g for genes in fam_genes.values() for g in genes})
    missing = set()
    for name in FAMILY_NAMES:  # listed but absent from the data (tail of each own-prefix list)
        own = [g for g in fam_genes[name] if g.startswith(_PREFIX[name])]
        missing.update(own[len(own) - n_missing_listed:] if n_missing_listed else [])
    genes = [g for g in all_listed if g not in missing] + [f"NOISE{j + 1}" for j in range(n_noise_genes)]
    planted = {name: [g for g in fam_genes[name] if g.startswith(_PREFIX[name]) and g not in missing]
               [:n_planted_per_family] for name in FAMILY_NAMES if name in planted_families}
    return fam_genes, genes, planted


def _counts(rng: np.random.Generator, genes: list[str], planted: set[str], phenotype: np.ndarray,
            effect_log2: float, dispersion: float) -> tuple[np.ndarray, np.ndarray]:
    """(raw counts genes x cases, negative binomial; per-case size factors): a planted gene's mean rises
    by ``effect_log2`` (log2) over the phenotype range."""
    log2_base = rng.normal(7.0, 1.5, len(genes))                   # ~128 counts typical
    effect = np.array([effect_log2 if g in planted else 0.0 for g in genes])
    lib_size = np.exp(rng.normal(0.0, 0.2, len(phenotype)))         # per-case size factor
    mu = lib_size[None, :] * np.exp2(log2_base[:, None] + effect[:, None] * (phenotype[None, :] - 0.5))
    r = 1.0 / dispersion
    return rng.negative_binomial(r, r / (r + mu)), lib_size


def _mcat_features(rng: np.random.Generator, genes: list[str], counts: np.ndarray, lib_size: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """MCAT-style columns: ``<gene>_rnaseq`` (z-scored log2 normalised counts) for every gene, ``_cnv`` for
    every second gene, ``_mut`` for every fifth."""
    n_cases = counts.shape[1]
    norm = np.log2(counts / lib_size[None, :] + 1.0)
    z = (norm - norm.mean(axis=1, keepdims=True)) / np.maximum(norm.std(axis=1, keepdims=True), 1e-8)
    feat = {f"{g}_rnaseq": np.round(z[gi], 4) for gi, g in enumerate(genes)}
    for gi, g in enumerate(genes):
        if gi % 2 == 0:
            feat[f"{g}_cnv"] = rng.choice([-2, -1, 0, 1, 2], n_cases, p=[0.05, 0.15, 0.6, 0.15, 0.05])
    for gi, g in enumerate(genes):
        if gi % 5 == 0:
            feat[f"{g}_mut"] = (rng.uniform(size=n_cases) < 0.1).astype(int)
    return feat


def make_cohort(n_cases: int = 40, seed: int = 0, genes_per_family: tuple[int, int] = (20, 40),
                planted_families: tuple[str, ...] = DEFAULT_PLANTED_FAMILIES, n_planted_per_family: int = 4,
                effect_log2: float = 6.0, beta: float = 5.0, censor_fraction: float = 0.3,
                n_noise_genes: int = 10, n_missing_listed: int = 2, second_slide_fraction: float = 0.2,
                baseline_median_months: float = 30.0, max_follow_up_months: float = 150.0,
                dispersion: float = 0.1, case_prefix: str = "SYN") -> SyntheticCohort:
    """Build a synthetic cohort (deterministic for a given ``seed``).

    ``genes_per_family``: (min, max) number of genes listed per family; ``effect_log2``: log2 fold
    change of a planted gene's mean count over the whole phenotype range; ``beta``: log hazard ratio
    over the phenotype range; ``censor_fraction``: target fraction of censored cases (independent
    censoring); ``n_missing_listed``: genes listed per family that are absent from the data.
    """
    if n_cases < 4:
        raise ValueError("n_cases must be at least 4")
    unknown = set(planted_families) - set(FAMILY_NAMES)
    if unknown:
        raise ValueError(f"unknown planted families {sorted(unknown)}; choose from {FAMILY_NAMES}")
    rng = np.random.default_rng(seed)
    case_ids = [f"{case_prefix}-{i + 1:04d}" for i in range(n_cases)]
    phenotype, survival_months, censorship = _survival(rng, n_cases, beta, censor_fraction, baseline_median_months,
                                                       max_follow_up_months)
    fam_genes, genes, planted = _gene_families(rng, genes_per_family, planted_families, n_planted_per_family,
                                               n_noise_genes, n_missing_listed)
    counts_arr, lib_size = _counts(rng, genes, {g for gs in planted.values() for g in gs}, phenotype, effect_log2,
                                   dispersion)
    feat = _mcat_features(rng, genes, counts_arr, lib_size)
    rows = [(i, cid, f"{cid}-{s + 1:02d}") for i, cid in enumerate(case_ids)
            for s in range(2 if rng.uniform() < second_slide_fraction else 1)]
    idx = np.array([r[0] for r in rows])
    meta = pd.DataFrame({
        "case_id": [r[1] for r in rows], "slide_id": [r[2] for r in rows], "oncotree_code": "SYN",
        "age": rng.integers(35, 85, n_cases)[idx], "is_female": rng.integers(0, 2, n_cases)[idx],
        "survival_months": survival_months[idx], "censorship": censorship[idx],
    })
    clinical = meta[["case_id", "slide_id", "survival_months", "censorship"]].copy()
    clinical["phenotype"] = np.round(phenotype[idx], 6)
    width = max(len(v) for v in fam_genes.values())
    families = pd.DataFrame({name: pd.Series(fam_genes[name] + [None] * (width - len(fam_genes[name])),
                                             dtype=object) for name in FAMILY_NAMES})
    params = dict(n_cases=n_cases, seed=seed, genes_per_family=list(genes_per_family),
                  planted_families=list(planted_families), n_planted_per_family=n_planted_per_family,
                  effect_log2=effect_log2, beta=beta, censor_fraction=censor_fraction, dispersion=dispersion)
    return SyntheticCohort(
        clinical=clinical, table=pd.concat([meta, pd.DataFrame({k: v[idx] for k, v in feat.items()})], axis=1),
        counts=pd.DataFrame(counts_arr.astype(np.int64), index=pd.Index(genes, name="gene"), columns=case_ids),
        families=families, planted=planted, genes=genes, params=params)


def write_cohort_tables(cohort: SyntheticCohort, out_dir: Path | str, table_name: str = "genomics_table.csv.zip"
                        ) -> dict[str, Path]:
    """Write the cohort's tables under ``out_dir`` (atomically) and return their paths.

    Keys: ``table`` (MCAT-style, ``.csv.zip`` by default; pass ``table_name="x.csv"`` for plain CSV),
    ``counts`` (``counts.csv``, genes x cases, first column ``gene_name``), ``clinical``
    (``clinical.csv``, one row per slide incl. ``phenotype``), ``families`` (``families.csv``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table": out_dir / table_name, "counts": out_dir / "counts.csv",
             "clinical": out_dir / "clinical.csv", "families": out_dir / "families.csv"}
    with atomic_path(paths["table"]) as tmp:
        if table_name.endswith(".zip"):
            inner = table_name[: -len(".zip")]
            cohort.table.to_csv(tmp, index=False, compression={"method": "zip", "archive_name": inner})
        else:
            cohort.table.to_csv(tmp, index=False)
    with atomic_path(paths["counts"]) as tmp:
        cohort.counts.rename_axis("gene_name").to_csv(tmp)
    with atomic_path(paths["clinical"]) as tmp:
        cohort.clinical.to_csv(tmp, index=False)
    with atomic_path(paths["families"]) as tmp:
        cohort.families.to_csv(tmp, index=False)
    return paths
