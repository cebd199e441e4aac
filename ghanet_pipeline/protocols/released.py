"""The released code's class-balanced training loader, repeated exactly: its sampling weights, one pass of
its draw, and the t-test risk groups the released code builds from that pass (``--ttest-groups loader``)."""

from __future__ import annotations

import numpy as np


def balanced_class_weights(bins: np.ndarray, censorship: np.ndarray) -> np.ndarray:
    """Per-case sampling weight n / (size of the case's (bin, censorship) class), float64 — the weights of
    the released code's class-balanced sampler (8 classes = 4 bins x censored or not)."""
    cls = np.asarray(bins, dtype=np.int64) * 2 + np.asarray(censorship, dtype=np.int64)
    counts = np.bincount(cls, minlength=8).astype(np.float64)
    n = float(len(cls))
    return np.array([n / counts[c] for c in cls], dtype=np.float64)


def official_loader_draw(bins: np.ndarray, censorship: np.ndarray, seed: int) -> np.ndarray:
    """Case indices of one pass of the released code's training loader, in draw order.

    The released code seeds torch with ``seed`` before each fold, then iterates a ``DataLoader`` over the
    training cases (in cohort-table order) with ``WeightedRandomSampler(weights, n)`` (with replacement).
    Iterating a ``DataLoader`` first draws one 64-bit base seed from the global generator, then the sampler
    calls ``torch.multinomial``. This function repeats exactly those two draws on a generator seeded with
    ``seed``, so the indices equal what that loader yields on the same torch version (pinned by a test
    against a real ``DataLoader``). Classes without cases get no weight (the released code divides by
    zero there).
    """
    import torch

    w = balanced_class_weights(bins, censorship)
    if len(w) == 0:
        return np.zeros(0, dtype=np.int64)
    g = torch.Generator().manual_seed(int(seed))
    torch.empty((), dtype=torch.int64).random_(generator=g)          # the DataLoader iterator's base seed
    idx = torch.multinomial(torch.as_tensor(w, dtype=torch.double), len(w), True, generator=g)
    return idx.numpy().astype(np.int64)


def loader_risk_groups(bins: np.ndarray, censorship: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) case-index arrays with repeats, as the released code builds them from one loader pass.

    Per drawn case: censored (censorship 1) with bin >= 2 -> low; censored with bin < 2 -> left out;
    event with bin >= 2 -> low; event with bin < 2 -> high.
    """
    bins = np.asarray(bins)
    cens = np.asarray(censorship)
    draw = official_loader_draw(bins, cens, seed)
    low = draw[bins[draw] >= 2]
    high = draw[(bins[draw] < 2) & (cens[draw] == 0)]
    return high, low
