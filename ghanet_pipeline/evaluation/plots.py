"""Figures of a training / evaluation run: Kaplan-Meier by risk group, gene-reconstruction Spearman
violins (the paper's Fig. 4) and learning curves. Every figure is written atomically as PNG.

Matplotlib runs on the non-interactive ``Agg`` backend; nothing is shown on screen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..ioutils import atomic_path

OPTIMISTIC_NOTE = "OPTIMISTIC: epoch chosen on the validation fold (authors' protocol)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path | str) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_km(time: Sequence[float], event: Sequence[Any], high: Sequence[bool], path: Path | str,
            logrank_p: float | None = None, title: str = "Kaplan-Meier by predicted risk",
            note: str = "") -> Path:
    """Kaplan-Meier curves (95% confidence bands) of low- and high-risk cases, at-risk counts below the
    axis and the log-rank p-value. ``time`` in months; ``event`` 1 = death."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    plt = _pyplot()
    t = np.asarray(time, dtype=float)
    e = np.asarray(event).astype(bool)
    h = np.asarray(high, dtype=bool)
    fig, ax = plt.subplots(figsize=(7, 5.5))
    fitters = []
    for mask, label, color in ((~h, "low risk", "tab:blue"), (h, "high risk", "tab:red")):
        if mask.sum() == 0:
            continue
        kmf = KaplanMeierFitter(label=f"{label} (n={int(mask.sum())})")
        kmf.fit(t[mask], event_observed=e[mask])
        kmf.plot_survival_function(ax=ax, ci_show=True, color=color, show_censors=True,
                                   censor_styles={"marker": "|", "ms": 6})
        fitters.append(kmf)
    if fitters:
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"])
    ax.set_xlabel("time (months)")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    p_text = "log-rank p = n/a" if logrank_p is None or not np.isfinite(logrank_p) else f"log-rank p = {logrank_p:.3g}"
    ax.text(0.98, 0.98, p_text, transform=ax.transAxes, ha="right", va="top",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=10, color="darkred" if note else "black")
    return _save(fig, path)


def plot_spearman(per_family: Mapping[str, Sequence[float]], path: Path | str,
                  title: str = "Gene reconstruction: Spearman per validation case", note: str = "") -> Path:
    """Violin per family of per-case Spearman correlations (reconstructed vs true standardised genes),
    annotated with mean +- std. Families without finite values are shown empty."""
    plt = _pyplot()
    names = list(per_family)
    data = [np.asarray([v for v in per_family[n] if v is not None and np.isfinite(v)], dtype=float) for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names) + 2), 4.5))
    pos = [i + 1 for i, d in enumerate(data) if len(d) > 1]
    if pos:
        ax.violinplot([data[i - 1] for i in pos], positions=pos, showmeans=True, showextrema=True)
    for i, d in enumerate(data, start=1):
        if len(d) == 1:
            ax.plot([i], d, "o", color="tab:blue")
        label = f"{d.mean():.2f}\n±{d.std():.2f}" if len(d) else "n/a"
        ax.text(i, 1.02, label, ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="0.6", lw=0.8, ls="--")
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(-1.05, 1.25)
    ax.set_ylabel("Spearman r")
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=10, color="darkred" if note else "black")
    return _save(fig, path)


def plot_learning_curves(histories: Mapping[Any, Sequence[Mapping[str, Any]]], path: Path | str,
                         selected_epochs: Mapping[Any, int] | None = None, note: str = "") -> Path:
    """Per fold: training and validation loss, and validation c-index, by epoch (1-based).

    ``histories[fold]`` is a list of per-epoch dicts with ``epoch``, ``train_loss``, ``val_loss``,
    ``val_c_index`` (None when undefined). ``selected_epochs`` marks the reported epoch per fold.
    """
    plt = _pyplot()
    fig, (ax_l, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("tab10")
    for i, (fold, hist) in enumerate(sorted(histories.items(), key=lambda kv: str(kv[0]))):
        color = cmap(i % 10)
        ep = [h["epoch"] for h in hist]

        def series(key: str, hist: Sequence[Mapping[str, Any]] = hist) -> list[float]:
            return [np.nan if h.get(key) is None else float(h[key]) for h in hist]

        ax_l.plot(ep, series("train_loss"), "-", color=color, label=f"fold {fold} train")
        ax_l.plot(ep, series("val_loss"), "--", color=color, label=f"fold {fold} val")
        ax_c.plot(ep, series("val_c_index"), "-o", ms=3, color=color, label=f"fold {fold}")
        if selected_epochs and fold in selected_epochs:
            sel = selected_epochs[fold]
            vals = [h.get("val_c_index") for h in hist if h["epoch"] == sel]
            if vals and vals[0] is not None:
                ax_c.plot([sel], [vals[0]], "*", ms=12, color=color)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_l, ax_c):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss (NLL + alpha * reconstruction)")
    ax_l.legend(fontsize=7, ncol=2)
    ax_c.axhline(0.5, color="0.6", lw=0.8, ls="--")
    ax_c.set_xlabel("epoch")
    ax_c.set_ylabel("validation c-index")
    ax_c.set_ylim(0, 1)
    ax_c.legend(fontsize=7)
    fig.suptitle("Learning curves" + (f" — {note}" if note else ""), fontsize=10,
                 color="darkred" if note else "black")
    return _save(fig, path)
