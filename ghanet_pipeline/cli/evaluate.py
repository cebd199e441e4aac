"""``ghanet evaluate``: c-index (per fold, mean ± std, pooled), Kaplan-Meier and log-rank for any
predictions table."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import overwrite_option


@click.command("evaluate")
@click.argument("predictions", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for metrics.json and km.png.")
@click.option("--case-col", default="case_id", show_default=True)
@click.option("--risk-col", default="risk", show_default=True, help="Risk score column (higher = worse).")
@click.option("--time-col", default="survival_months", show_default=True, help="Follow-up time column (months).")
@click.option("--censorship-col", default="censorship", show_default=True, help="1 = censored, 0 = death.")
@click.option("--event-col", default=None, help="Use an event column instead (1 = death, 0 = censored).")
@click.option("--fold-col", default="fold", show_default=True,
              help="Fold column; without it (or with --no-folds) only pooled metrics are computed.")
@click.option("--no-folds", is_flag=True, help="Ignore any fold column (pooled metrics).")
@overwrite_option
def evaluate(predictions: Path, out: Path, case_col: str, risk_col: str, time_col: str, censorship_col: str,
             event_col: str | None, fold_col: str, no_folds: bool, overwrite: bool) -> None:
    """Compute c-index, Kaplan-Meier curves (median-risk split) and log-rank p for PREDICTIONS.csv."""
    from rich.console import Console
    from rich.table import Table

    from ..core.errors import ConfigError
    from ..evaluation.evaluate import Columns, evaluate_predictions

    if (out / "metrics.json").exists() and not overwrite:
        raise ConfigError(f"{out / 'metrics.json'} already exists; pass --overwrite or another --out")
    cols = Columns(case=case_col, risk=risk_col, time=time_col, censorship=censorship_col, event=event_col,
                   fold=None if no_folds else fold_col)
    m = evaluate_predictions(predictions, out, cols)

    def fmt(v: float | None, spec: str = ".3f") -> str:
        return "n/a" if v is None else format(v, spec)

    table = Table(title=f"c-index — {predictions}")
    table.add_column("fold")
    table.add_column("c-index", justify="right")
    for k, v in m["c_index_per_fold"].items():
        table.add_row(str(k), fmt(v))
    if m["c_index_per_fold"]:
        table.add_section()
        table.add_row("mean ± std", f"{fmt(m['c_index_mean'])} ± {fmt(m['c_index_std'])}")
    table.add_row("pooled", fmt(m["c_index_pooled"]))
    table.add_row("log-rank p", fmt(m["logrank_p"], ".3g"))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    console.print(f"read: {m['columns_read']}; {m['n_cases']} cases, {m['n_events']} events; "
                  f"risk groups: {m['risk_split']}")
    for w in m["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"wrote {out / 'metrics.json'} and {out / 'km.png'}")
    sys.exit(0)
