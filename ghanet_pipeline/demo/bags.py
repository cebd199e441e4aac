"""Feature bags made directly from a synthetic cohort's phenotypes (no slides, no encoder).

For tests and benchmarks of training: each slide of ``cohort.clinical`` gets a real ghanet bag (written
with ``bags.write_bag``, so attrs and encoder checks are exercised) of ``n_patches`` patch features of
dimension ``dim`` (1024 like the truncated ResNet50). A patch is a noisy copy of one of a few "tissue"
prototypes, or of a "dense nuclei" prototype; the share of dense-nuclei patches grows linearly with the
case's phenotype (``dense_share[0]`` at phenotype 0 to ``dense_share[1]`` at 1), and the phenotype also
drives the hazard and the planted genes (:mod:`.cohort`). With ``nuisance`` (default) slides also
differ in ways unrelated to survival (mix of tissue types, staining gain), as real slides do. So a model
can learn risk from the bags, and the planted genes can be reconstructed from them.

Features are non-negative like ReLU-pooled CNN features. The prototypes depend only on
``feature_seed`` (the "encoder"): bags from different feature seeds are a different encoder
(``weights_sha256 = "random:<feature_seed>"``) and are refused together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.ids import sanitize_id

#: encoder name written into synthetic bags' attrs
SYNTHETIC_ENCODER = "synthetic_phenotype"


def prototypes(dim: int = 1024, n_tissue: int = 4, feature_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tissue prototypes (n_tissue, dim), dense-nuclei prototype (dim,)), non-negative."""
    rng = np.random.default_rng([feature_seed, 7])
    tissue = np.maximum(rng.normal(0.5, 0.35, size=(n_tissue, dim)), 0.0)
    dense = np.maximum(rng.normal(0.5, 0.35, size=dim), 0.0)
    return tissue.astype(np.float32), dense.astype(np.float32)


def phenotype_features(phenotype: float, n_patches: int, rng: np.random.Generator, dim: int = 1024,
                       dense_share: tuple[float, float] = (0.05, 0.6), noise: float = 0.25,
                       feature_seed: int = 0, nuisance: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (n, dim) float32, coords (n, 2) int64 (level-0 px on a 512-px grid) and the boolean
    dense-nuclei mask of one slide whose case has ``phenotype`` in [0, 1]."""
    tissue, dense = prototypes(dim, feature_seed=feature_seed)
    share = dense_share[0] + (dense_share[1] - dense_share[0]) * float(np.clip(phenotype, 0.0, 1.0))
    is_dense = rng.random(n_patches) < share
    # nuisance variation unrelated to survival, as on real slides: the mix of tissue types differs from
    # slide to slide (Dirichlet) and so does the staining (a per-slide gain)
    mix = rng.dirichlet(np.full(len(tissue), 4.0)) if nuisance else np.full(len(tissue), 1.0 / len(tissue))
    kind = rng.choice(len(tissue), size=n_patches, p=mix)
    base = np.where(is_dense[:, None], dense[None, :], tissue[kind])
    gain = float(np.exp(rng.normal(0.0, 0.1))) if nuisance else 1.0
    feats = np.maximum(gain * base + rng.normal(0.0, noise, size=(n_patches, dim)), 0.0).astype(np.float32)
    side = int(np.ceil(np.sqrt(n_patches)))
    idx = np.arange(n_patches)
    coords = np.stack([(idx % side) * 512, (idx // side) * 512], axis=1).astype(np.int64)
    return feats, coords, is_dense


def bag_attrs(slide_id: str, feature_seed: int = 0, encoder: str = SYNTHETIC_ENCODER) -> dict[str, Any]:
    """Bag root attrs (docs/architecture.md, "Bag schema") of a synthetic bag (20x, 256 px patches, 0.25 um/px level 0)."""
    return {"schema_version": 1, "slide_id": slide_id, "encoder": encoder,
            "weights_sha256": f"random:{feature_seed}", "input_size": 224, "target_mpp": 0.5, "patch_size": 256,
            "patch_size_level0": 512, "level0_mpp": 0.25, "source_name": f"{slide_id}.synthetic",
            "source_bytes": 0, "ghanet_version": __version__}


def write_synthetic_bags(cohort: Any, out_dir: Path | str, n_patches: int | tuple[int, int] = 200,
                         dim: int = 1024, seed: int = 0, feature_seed: int = 0,
                         dense_share: tuple[float, float] = (0.05, 0.6), noise: float = 0.25,
                         nuisance: bool = True, dtype: str = "float32") -> dict[str, Path]:
    """Write one bag per slide of ``cohort.clinical`` (columns slide_id, phenotype) into ``out_dir``.

    ``n_patches``: patches per slide, or a (min, max) range drawn per slide. Deterministic for a given
    ``seed``. Returns slide_id -> bag path.
    """
    from ..features.bags import write_bag

    clinical = getattr(cohort, "clinical", cohort)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 11])
    paths: dict[str, Path] = {}
    for row in clinical.itertuples(index=False):
        sid = sanitize_id(str(row.slide_id), "slide_id")
        n = n_patches if isinstance(n_patches, int) else int(rng.integers(n_patches[0], n_patches[1] + 1))
        feats, coords, _ = phenotype_features(float(row.phenotype), n, rng, dim=dim, dense_share=dense_share,
                                              noise=noise, feature_seed=feature_seed, nuisance=nuisance)
        paths[sid] = write_bag(out_dir / f"{sid}.h5", feats, coords, bag_attrs(sid, feature_seed), dtype=dtype)
    return paths
