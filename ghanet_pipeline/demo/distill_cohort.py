"""A controlled cohort for the distillation experiment: genes carry what the survival labels hide.

Every case has one hidden ``phenotype`` p in [0, 1] (``demo.cohort.make_cohort``: it sets the hazard,
log-hazard ``beta * (p - 0.5)``, and the planted genes' expression). In the slide the phenotype shows
only as the share of a **rare** patch type: a share ``p * share_max`` of the patches (0 to 20 % by
default, 10 % for the median case) are *planted*: ordinary tissue patches shifted by ``contrast`` noise
standard deviations along one fixed feature direction, amid slide-to-slide nuisance (tissue mix,
staining gain). The slide does carry the phenotype: with the defaults a ridge regression on the slides'
mean features, fitted on the phenotype itself, reaches Spearman 0.92 (5-fold, 60 cases). What is scarce
is the *supervision* that would point a model at it.

Why distillation must help here, for a reason that also holds on real cohorts:

- **Survival labels are weak.** Few cases and heavy censoring (70 % by default: 60 cases, about 14
  events in a training fold) say little about which patches matter.
- **Genes are strong.** The planted genes follow the phenotype closely (negative-binomial counts,
  ``gene_noise`` = dispersion; Spearman about 0.95 with the phenotype) for *every* case, censored or
  not: reconstructing them from the slide is a dense training signal pointing at the planted patches.

The share and contrast are set where G-HANet's gene branch can learn the reconstruction at all (the
paper's premise: the genes are visible in the tissue). Subtler settings (at most 8-10 % of patches at
contrast 2-12, or 20 % at contrast 3) defeat the gene branch itself at this size: its reconstruction
stays flat and distillation has nothing to pass on (docs/fidelity.md, "The controlled distillation
experiment"). Parameters (cases, share, contrast, censoring, gene noise)
are the experiment's axes (``benchmarks/distillation.py`` sweeps censoring or cases). Features are
Gaussian around non-negative tissue prototypes (``demo.bags.prototypes``), dimension ``dim`` (64: a
small, fast stand-in for an encoder), ``n_patches`` per slide, one slide per case; bags are real ghanet
bags (``write_bag``) and the planted-patch masks are kept (``planted_masks.npz``) to score attention.
:func:`make_test_cohort` draws an external test cohort of the same design, in memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import atomic_path
from ..core.ids import sanitize_id
from .bags import bag_attrs, prototypes
from .cohort import SyntheticCohort, make_cohort, write_cohort_tables

#: encoder name written into the bags' attrs
DISTILL_ENCODER = "synthetic_planted_share"


@dataclass(frozen=True)
class DistillCohortSpec:
    """Parameters of the controlled cohort (defaults = the experiment's default size).

    ``n_cases``: cases (one slide each). ``share_max``: share of planted patches at phenotype 1 (0 at
    phenotype 0). ``contrast``: shift of a planted patch along the planted direction, in units of the
    patch noise standard deviation (``noise``). ``censoring``: target fraction of censored cases.
    ``gene_noise``: negative-binomial dispersion of the gene counts (0.1 = log2 sd about 0.45 against a
    planted range of ``effect_log2`` = 6 over the phenotype range). ``beta``: log hazard ratio over the
    phenotype range. ``seed``: draws the cases; ``feature_seed``: the "encoder" (prototypes, direction).
    """

    n_cases: int = 60
    share_max: float = 0.2
    contrast: float = 16.0
    censoring: float = 0.7
    gene_noise: float = 0.1
    beta: float = 4.0
    effect_log2: float = 6.0
    n_patches: int = 200
    dim: int = 64
    noise: float = 0.25
    seed: int = 0
    feature_seed: int = 0

    def validate(self) -> None:
        checks = [(self.n_cases >= 10, "n_cases must be at least 10"),
                  (0 < self.share_max <= 1, "share_max must be in (0, 1]"),
                  (self.contrast >= 0, "contrast must be >= 0"),
                  (0 <= self.censoring < 1, "censoring must be in [0, 1)"),
                  (self.gene_noise > 0, "gene_noise (NB dispersion) must be > 0"),
                  (self.n_patches >= 10 and self.dim >= 4, "n_patches >= 10 and dim >= 4 needed")]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ValueError("; ".join(bad))


@dataclass
class DistillCohort:
    """A written cohort: ``features`` (bag folder), ``table`` / ``families`` (inputs of
    preprocess-genomics), ``masks`` (slide_id -> bool planted-patch mask), the tables (``cohort``)."""

    spec: DistillCohortSpec
    cohort: SyntheticCohort
    features: Path
    table: Path
    families: Path
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def phenotype(self) -> dict[str, float]:
        """case_id -> hidden phenotype (the oracle risk)."""
        return {str(c): float(p) for c, p in self.cohort.cases["phenotype"].items()}


def planted_direction(dim: int, feature_seed: int = 0) -> np.ndarray:
    """The unit vector (dim,) along which planted patches are shifted (fixed by the "encoder")."""
    v = np.random.default_rng([feature_seed, 29]).normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def planted_bag(phenotype: float, rng: np.random.Generator, spec: DistillCohortSpec
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (n, dim) float32, coords (n, 2) int64 and the planted-patch mask of one slide."""
    tissue, _ = prototypes(spec.dim, feature_seed=spec.feature_seed)
    n = spec.n_patches
    share = spec.share_max * float(np.clip(phenotype, 0.0, 1.0))
    planted = rng.random(n) < share
    mix = rng.dirichlet(np.full(len(tissue), 4.0))        # slide-to-slide tissue mix (nuisance)
    kind = rng.choice(len(tissue), size=n, p=mix)
    gain = float(np.exp(rng.normal(0.0, 0.1)))           # staining gain (nuisance)
    shift = spec.contrast * spec.noise * planted_direction(spec.dim, spec.feature_seed)
    feats = gain * tissue[kind] + rng.normal(0.0, spec.noise, size=(n, spec.dim)) + planted[:, None] * shift
    side = int(np.ceil(np.sqrt(n)))
    idx = np.arange(n)
    coords = np.stack([(idx % side) * 512, (idx // side) * 512], axis=1).astype(np.int64)
    return feats.astype(np.float32), coords, planted


def make_distill_cohort(spec: DistillCohortSpec, out_dir: Path | str) -> DistillCohort:
    """Write the cohort under ``out_dir``: ``inputs/`` (table.csv, families.csv, clinical, counts),
    ``features/<encoder>/`` (one bag per slide), ``planted_masks.npz`` and ``spec.json``."""
    import json

    from ..features.bags import write_bag

    spec.validate()
    out_dir = Path(out_dir)
    spec_path = out_dir / "spec.json"
    # the same spec already written here: bags are deterministic, so keep them (reruns resume)
    same = spec_path.is_file() and json.loads(spec_path.read_text()) == json.loads(json.dumps(asdict(spec)))
    cohort = make_cohort(n_cases=spec.n_cases, seed=spec.seed, beta=spec.beta, censor_fraction=spec.censoring,
                         dispersion=spec.gene_noise, effect_log2=spec.effect_log2, second_slide_fraction=0.0,
                         case_prefix="DST")
    paths = write_cohort_tables(cohort, out_dir / "inputs", table_name="table.csv")
    feats = out_dir / "features" / DISTILL_ENCODER
    feats.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([spec.seed, spec.feature_seed, 31])
    masks: dict[str, np.ndarray] = {}
    for row in cohort.clinical.itertuples(index=False):
        sid = sanitize_id(str(row.slide_id), "slide_id")
        x, coords, planted = planted_bag(float(row.phenotype), rng, spec)
        if not (same and (feats / f"{sid}.h5").is_file()):
            write_bag(feats / f"{sid}.h5", x, coords, bag_attrs(sid, spec.feature_seed, encoder=DISTILL_ENCODER))
        masks[sid] = planted
    with atomic_path(out_dir / "planted_masks.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **masks)
    with atomic_path(spec_path) as tmp:
        Path(tmp).write_text(json.dumps(asdict(spec), indent=1))
    return DistillCohort(spec=spec, cohort=cohort, features=feats, table=paths["table"],
                         families=paths["families"], masks=masks)


@dataclass
class TestCohort:
    """An external test cohort of the same design (in memory): per case the bag ``features`` (n, dim),
    the planted ``masks``, ``time`` (months), ``event`` (1 = death), ``phenotype``."""

    features: list[np.ndarray]
    masks: list[np.ndarray]
    time: np.ndarray
    event: np.ndarray
    phenotype: np.ndarray


def make_test_cohort(spec: DistillCohortSpec, n_cases: int = 400) -> TestCohort:
    """``n_cases`` new cases drawn like ``spec``'s (same hazard, censoring and bags; another seed stream),
    for scoring trained models on many more cases than a validation fold holds."""
    cohort = make_cohort(n_cases=n_cases, seed=spec.seed + 100_003, beta=spec.beta,
                         censor_fraction=spec.censoring, second_slide_fraction=0.0, n_planted_per_family=1,
                         genes_per_family=(3, 3), n_missing_listed=0, n_noise_genes=0, case_prefix="TST")
    cases = cohort.cases
    rng = np.random.default_rng([spec.seed, spec.feature_seed, 37])
    bags = [planted_bag(float(p), rng, spec) for p in cases["phenotype"]]
    return TestCohort(features=[b[0] for b in bags], masks=[b[2] for b in bags],
                      time=cases["survival_months"].to_numpy(dtype=float),
                      event=1 - cases["censorship"].to_numpy(dtype=int),
                      phenotype=cases["phenotype"].to_numpy(dtype=float))


def describe(spec: DistillCohortSpec) -> dict[str, Any]:
    """The spec as a plain dict (for JSON reports)."""
    return asdict(spec)
