"""Discrete-time survival: losses (NLL, SCE), risk and survival curves from hazards.

Conventions (docs/architecture.md, "Words and units"): ``n_bins`` time intervals (bin edges in months), censorship 1 =
censored (alive at last follow-up), 0 = event. A model outputs hazards ``h[j]`` = P(event in bin j |
alive at the start of bin j); ``S[j] = prod_{i<=j} (1 - h[i])`` = P(alive after bin j);
risk = ``-sum_j S[j]`` (higher = worse; minus the expected number of bins survived).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-7


def _as_column(x, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(x, device=like.device).to(dtype).reshape(-1, 1)


def nll_loss(hazards: torch.Tensor, S: torch.Tensor, bin, censorship, alpha: float = 0.0,
             eps: float = EPS) -> torch.Tensor:
    """Negative log-likelihood of discrete-time survival (Zadeh & Schmid 2020), mean over the batch.

    ``hazards``, ``S``: (B, n_bins); ``bin``: (B,) label bin y in 0..n_bins-1 (int or tensor);
    ``censorship``: (B,) c in {0, 1}. With ``S_pad = [1, S[0], ..., S[n_bins-1]]`` (S before bin 0 is 1)
    and every probability clamped at ``eps`` (1e-7) before the log::

        uncensored = -(1 - c) * (log S_pad[y] + log h[y])   # alive until bin y, event within it
        censored   = -c * log S_pad[y + 1]                  # alive after bin y
        loss       = (1 - alpha) * (censored + uncensored) + alpha * uncensored

    ``alpha`` (``--alpha-surv``, default 0) up-weights the uncensored term, as in MCAT/G-HANet code.
    """
    y = _as_column(bin, hazards, torch.long)
    c = _as_column(censorship, hazards, hazards.dtype)
    s_pad = torch.cat([torch.ones_like(S[:, :1]), S], dim=1)
    uncensored = -(1 - c) * (torch.log(torch.gather(s_pad, 1, y).clamp(min=eps))
                             + torch.log(torch.gather(hazards, 1, y).clamp(min=eps)))
    censored = -c * torch.log(torch.gather(s_pad, 1, y + 1).clamp(min=eps))
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()


def sce_loss(pred: torch.Tensor, target: torch.Tensor, gamma: float = 3.0) -> torch.Tensor:
    """Scaled cosine error (GraphMAE): ``(1 - cos(pred, target)) ** gamma``, mean over leading dims.

    Vectors are compared along the last dimension; a 1-D ``pred`` (n_i,) gives one value. 0 when the
    reconstruction points in the target's direction, 2**gamma when it points the opposite way.
    """
    cos = (F.normalize(pred, p=2, dim=-1) * F.normalize(target, p=2, dim=-1)).sum(dim=-1)
    return (1 - cos).pow(gamma).mean()


def survival_from_hazards(hazards: torch.Tensor) -> torch.Tensor:
    """S = cumprod(1 - h) along the last dimension (P(alive after each bin))."""
    return torch.cumprod(1 - hazards, dim=-1)


def risk_from_survival(surv: torch.Tensor) -> torch.Tensor:
    """Risk = -sum(S) over the last dimension, S = cumprod(1 - h) (higher = worse prognosis)."""
    return -surv.sum(dim=-1)
