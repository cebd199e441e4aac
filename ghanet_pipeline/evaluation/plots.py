"""Figures of a training / evaluation run: Kaplan-Meier by risk group, gene-reconstruction Spearman
violins (the paper's Fig. 4) and learning curves. Every figure is written atomically as PNG.

Figures are drawn with matplotlib's object API (a ``Figure`` on its own Agg canvas): the global
backend and pyplot's state are never touched, so importing this module in a notebook changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import atomic_path

OPTIMISTIC_NOTE = "OPTIMISTIC: epoch chosen on the validation fold (authors' protocol)"


def _figure(figsize: tuple[float, float], dpi: int = 100) -> Any:
    """A ``Figure`` with its own Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path | str) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def plot_km(time: Sequence[float], event: Sequence[Any], high: Sequence[bool], path: Path | str,
            logrank_p: float | None = None, title: str = "Kaplan-Meier by predicted risk",
            note: str = "") -> Path:
    """Kaplan-Meier curves (95% confidence bands) of low- and high-risk cases, at-risk counts below the
    axis and the log-rank p-value. ``time`` in months; ``event`` 1 = death."""
    from lifelines.plotting import add_at_risk_counts

    from .metrics import kaplan_meier

    t = np.asarray(time, dtype=float)
    e = np.asarray(event).astype(bool)
    h = np.asarray(high, dtype=bool)
    fig = _figure((7, 5.5))
    ax = fig.add_subplot()
    fitters = []
    for mask, label, color in ((~h, "low risk", "tab:blue"), (h, "high risk", "tab:red")):
        if mask.sum() == 0:
            continue
        kmf = kaplan_meier(t[mask], e[mask], label=f"{label} (n={int(mask.sum())})")
        kmf.plot_survival_function(ax=ax, ci_show=True, color=color, show_censors=True,
                                   censor_styles={"marker": "|", "ms": 6})
        fitters.append(kmf)
    if fitters:
        add_at_risk_counts(*fitters, ax=ax, fig=fig, rows_to_show=["At risk"])
    ax.set_xlabel("time (months)")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    p_text = "log-rank p = n/a" if logrank_p is None or not np.isfinite(logrank_p) else f"log-rank p = {logrank_p:.3g}"
    ax.text(0.98, 0.98, p_text, transform=ax.transAxes, ha="right", va="top",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=10, color="darkred" if note else "black")
    return _save(fig, path)


def _violins(ax: Any, names: Sequence[str], data: Sequence[np.ndarray], color: str = "tab:blue") -> None:
    """Violin per family (a dot for a single value), mean +- std written above each."""
    pos = [i + 1 for i, d in enumerate(data) if len(d) > 1]
    if pos:
        parts = ax.violinplot([data[i - 1] for i in pos], positions=pos, showmeans=True, showextrema=True)
        for body in parts["bodies"]:
            body.set_facecolor(color)
    for i, d in enumerate(data, start=1):
        if len(d) == 1:
            ax.plot([i], d, "o", color=color)
        label = f"{d.mean():.2f}\n±{d.std():.2f}" if len(d) else "n/a"
        ax.text(i, 1.02, label, ha="center", va="bottom", fontsize=7)
    ax.axhline(0, color="0.6", lw=0.8, ls="--")
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(-1.05, 1.3)
    ax.set_ylabel("Spearman r")


def _finite(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)


def plot_gene_reconstruction(per_gene: Mapping[str, Sequence[tuple[str, float]]],
                             per_case: Mapping[str, Sequence[float]], path: Path | str,
                             planted: Sequence[str] | set[str] = (), note: str = "") -> Path:
    """The gene-reconstruction report: two panels.

    Left (the headline): per family, a violin of *per-gene* Spearman correlations across validation
    cases (does the model rank the cases correctly for each gene?), one point per gene, the mean over
    folds. ``planted`` genes (known only on synthetic data) are drawn as red stars. Right: the
    per-case view (Spearman across the genes of one case, per validation case), which mixes genes
    the slides explain with genes they cannot and so looks weak even when some genes are learned.
    """
    names = list(dict.fromkeys([*per_gene, *per_case]))
    planted = set(planted)
    fig = _figure((max(10, 2.4 * len(names) + 3), 4.8))
    fig.set_layout_engine("constrained")  # room for the two-line title above the panel titles
    ax_g, ax_c = fig.subplots(1, 2)
    gene_vals = []
    for i, fam in enumerate(names, start=1):
        pairs = [(g, float(v)) for g, v in per_gene.get(fam, []) if v is not None and np.isfinite(v)]
        # one point per gene: mean over the folds it was selected in
        means: dict[str, list[float]] = {}
        for g, v in pairs:
            means.setdefault(g, []).append(v)
        gene_vals.append((i, {g: float(np.mean(v)) for g, v in means.items()}))
    _violins(ax_g, names, [np.asarray(list(m.values()), dtype=float) for _, m in gene_vals])
    rng = np.random.default_rng(0)
    for i, m in gene_vals:
        genes = list(m)
        x = i + rng.uniform(-0.12, 0.12, len(genes))
        y = np.asarray([m[g] for g in genes], dtype=float)
        is_p = np.asarray([g in planted for g in genes], dtype=bool)
        ax_g.scatter(x[~is_p], y[~is_p], s=8, color="0.3", zorder=3)
        if is_p.any():
            ax_g.scatter(x[is_p], y[is_p], s=60, marker="*", color="tab:red", zorder=4,
                         label="planted gene" if i == next(j for j, mm in gene_vals if any(g in planted for g in mm))
                         else None)
    if planted:
        ax_g.legend(loc="lower right", fontsize=7)
    ax_g.set_title("per gene: Spearman across validation cases", fontsize=9)
    _violins(ax_c, names, [_finite(per_case.get(n, [])) for n in names], color="tab:gray")
    ax_c.set_title("per case: Spearman across the genes of a case", fontsize=9)
    fig.suptitle("Gene reconstruction from the slide (validation folds)" + (f"\n{note}" if note else ""),
                 fontsize=10, color="darkred" if note.startswith("OPTIMISTIC") else "black")
    return _save(fig, path)


def plot_learning_curves(histories: Mapping[Any, Sequence[Mapping[str, Any]]], path: Path | str,
                         selected_epochs: Mapping[Any, int] | None = None, note: str = "") -> Path:
    """Per fold: training and validation loss, and validation c-index, by epoch (1-based).

    ``histories[fold]`` is a list of per-epoch dicts with ``epoch``, ``train_loss``, ``val_loss``,
    ``val_c_index`` (None when undefined). ``selected_epochs`` marks the reported epoch per fold.
    """
    import matplotlib

    fig = _figure((11, 4))
    ax_l, ax_c = fig.subplots(1, 2)
    cmap = matplotlib.colormaps["tab10"]
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
