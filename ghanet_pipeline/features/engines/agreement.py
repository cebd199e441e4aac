"""How closely features of a lower-precision encoder follow the fp32 features of the same patches.

Three figures, each meaningful for what the bags are used for:

- **per-patch cosine** between the two feature vectors of a patch (percentiles over patches): the
  direction of each vector;
- **error relative to the spread**: root-mean-square of ``got - ref`` over patches and channels,
  divided by the root-mean-square of ``ref - mean_over_patches(ref)``, i.e. the typical error in units
  of how much features differ *between* patches (what a slide model can use). Cosine alone can hide a
  large error when features share a big common component;
- **rank correlation of pairwise patch distances**: Spearman correlation between the Euclidean
  distances of all patch pairs under ``ref`` and under ``got`` (a sample of pairs above
  ``max_pairs``): whether patches that look alike stay alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the fidelity gate of int8 (issue 26 targets; checked on held-out calibration patches)
MAX_ERROR_SPREAD = 0.10
MIN_DISTANCE_RANK = 0.995


def agreement(ref: np.ndarray, got: np.ndarray, max_pairs: int = 200_000, seed: int = 0) -> dict[str, Any]:
    """Figures of ``got`` against ``ref`` (both ``(N, D)``, same rows); see module doc."""
    from scipy.stats import spearmanr

    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape or ref.ndim != 2:
        raise ValueError(f"feature arrays must have one shape (N, D); got {ref.shape} and {got.shape}")
    n = len(ref)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cos = (ref * got).sum(axis=1) / np.maximum(norms, 1e-30)
    spread = spread_rms(ref) if n > 1 else float("nan")
    err = float(np.sqrt(((got - ref) ** 2).mean()))
    out: dict[str, Any] = {
        "patches": int(n),
        "cosine": {f"p{q}": float(np.percentile(cos, q)) for q in (1, 5, 50)} | {"min": float(cos.min())},
        "error_rms": err,
        "spread_rms": spread,
        "error_spread": err / spread if spread > 0 else float("nan"),
        "distance_rank": float("nan"),
    }
    if n >= 3:
        i, j = _pairs(n, max_pairs, seed)
        d_ref = np.linalg.norm(ref[i] - ref[j], axis=1)
        d_got = np.linalg.norm(got[i] - got[j], axis=1)
        out["distance_rank"] = float(spearmanr(d_ref, d_got).statistic)
    return out


def spread_rms(ref: np.ndarray) -> float:
    """Root-mean-square of ``ref - mean_over_patches(ref)`` (``(N, D)``): how much features differ between patches."""
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.sqrt(((ref - ref.mean(axis=0)) ** 2).mean()))


def passes(figures: dict[str, Any]) -> bool:
    """Does ``figures`` (:func:`agreement`) meet the int8 fidelity gate?"""
    return bool(figures["error_spread"] <= MAX_ERROR_SPREAD and figures["distance_rank"] >= MIN_DISTANCE_RANK)


def _pairs(n: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs i < j, or a seeded sample of ``max_pairs`` of them."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return i, j
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, max_pairs)
    j = rng.integers(0, n - 1, max_pairs)
    j = j + (j >= i)  # j != i
    return np.minimum(i, j), np.maximum(i, j)


def describe(figures: dict[str, Any]) -> str:
    """One line: ``cosine p1 0.998 / median 0.9999, error 0.05 of the spread, distance rank 0.998``."""
    c = figures["cosine"]
    return (f"cosine p1 {c['p1']:.4f} / median {c['p50']:.5f}, error {figures['error_spread']:.3f} of the spread, "
            f"distance rank {figures['distance_rank']:.4f} ({figures['patches']} patches)")
