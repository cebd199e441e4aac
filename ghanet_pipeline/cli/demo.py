"""``ghanet demo``: every stage on a small synthetic cohort with a planted survival signal."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from ..demo.limits import MIN_CASES, MIN_SLIDE_PX


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
              show_default=True, help="Output root; the synthetic inputs go to <out>/demo-data.")
@click.option("--cases", type=click.IntRange(min=MIN_CASES), default=40, show_default=True,
              help="Training cases (about 1.2 slides each). Checked up front: every fold needs 2 high-risk and "
                   "2 low-risk training cases (e.g. 11 with --folds 2 at seed 0).")
@click.option("--holdout", type=click.IntRange(min=0), default=4, show_default=True,
              help="New patients whose slides are scored by `ghanet predict` at the end.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Cross-validation folds.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True, help="Training epochs per fold.")
@click.option("--slide-px", type=click.IntRange(min=MIN_SLIDE_PX), default=2048, show_default=True,
              help="Side of each synthetic slide in level-0 px at 0.5 um/px.")
@click.option("--models", default="ghanet,abmil", show_default=True,
              help="Models to train, comma-separated; the first one is used by predict.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--overwrite", is_flag=True,
              help="Redo every stage (default: reuse finished outputs in --out and continue the training runs).")
def demo(out: Path, cases: int, holdout: int, folds: int, epochs: int, slide_px: int, models: str, seed: int,
         device: str, overwrite: bool) -> None:
    """Build a synthetic cohort, run segment -> calibrate-encoder -> extract-features -> preprocess-genomics
    -> train -> predict,
    then print the c-index table, the held-out risk scores and where the plots are."""
    from rich.console import Console

    from ..core.errors import ConfigError, OptionValueError
    from ..demo.config import DemoConfig
    from ..demo.limits import check_config
    from ..demo.run import run_demo

    model_list = tuple(m.strip() for m in models.split(",") if m.strip())
    if not model_list:
        raise ConfigError("--models needs at least one model name, e.g. ghanet,abmil")
    config = DemoConfig(n_cases=cases, n_holdout=holdout, folds=folds, epochs=epochs, slide_px=slide_px,
                        seed=seed, models=model_list, device=device, overwrite=overwrite)
    try:
        check_config(config)  # sizes at which a stage would fail halfway: a usage error, nothing written
    except OptionValueError as exc:
        raise click.BadParameter(exc.detail, param_hint=f"'{exc.option}'") from None
    console = Console(width=None if sys.stdout.isatty() else 140)

    def on_stage(name: str, cmd: list[str]) -> None:
        shown = ["ghanet", *cmd[3:]] if cmd[:3] == [sys.executable, "-m", "ghanet_pipeline"] else cmd
        console.rule(f"[bold]{name}")
        console.print("$ " + " ".join(shlex.quote(c) for c in shown), style="dim", soft_wrap=True)
        sys.stdout.flush()

    result = run_demo(out, config, on_stage=on_stage)
    console.rule("[bold]demo summary")
    _print_stages(console, result)
    _print_cindex(console, result)
    _print_risks(console, result)
    _print_outputs(console, result)
    if "report" in result.outputs:
        console.print(f"[bold]report:[/] open {result.outputs['report'].resolve()} in a web browser (no server, no "
                      f"internet needed): results, Kaplan-Meier curves and a deep-zoom page per held-out slide")
    console.print(f"demo finished in {result.seconds:.0f} s" + ("" if result.ok else " [red]with failures[/]"))
    sys.exit(0 if result.ok else 1)


def _print_stages(console, result) -> None:  # noqa: ANN001 - rich Console, DemoResult (imported on use)
    from rich.table import Table

    stages = Table(title="stages")
    for col in ("stage", "status", "s"):
        stages.add_column(col, justify="right" if col == "s" else "left")
    for s in result.stages:
        stages.add_row(s.stage, "[green]ok[/]" if s.ok else f"[red]exit {s.returncode}[/]", f"{s.seconds:.1f}")
    console.print(stages)
    if result.feature_cosine is not None:
        console.print(f"patch features: mean pairwise cosine similarity {result.feature_cosine:.3f} "
                      f"(1 = every patch looks the same to the models; random weights without calibration: ~0.999)")
    if result.genes.get("planted_mean") is not None:
        g = result.genes
        console.print(f"gene reconstruction (G-HANet, per gene across validation cases): planted genes "
                      f"mean Spearman {g['planted_mean']:.2f} ({g.get('n_planted_features', 0)} features), other genes "
                      f"{_fmt(g.get('other_mean'), 2)}; planted genes are listed in {result.data_dir / 'cohort.json'}")


def _print_cindex(console, result) -> None:  # noqa: ANN001
    from rich.table import Table

    if not result.cindex:
        return
    table = Table(title="validation c-index (cross-validation, final epoch)")
    table.add_column("model")
    n_folds = max(len(r.get("c_index_per_fold", {})) for r in result.cindex)
    for k in range(n_folds):
        table.add_column(f"fold {k}", justify="right")
    for col in ("mean", "std", "pooled", "log-rank p"):
        table.add_column(col, justify="right")
    for r in result.cindex:
        per = [_fmt(v) for v in dict(r.get("c_index_per_fold", {})).values()]
        per += [""] * (n_folds - len(per))
        table.add_row(r["model"], *per, *(_fmt(r.get(k)) for k in
                                            ("c_index_mean", "c_index_std", "c_index_pooled", "logrank_p")))
    console.print(table)


def _print_risks(console, result) -> None:  # noqa: ANN001
    from rich.table import Table

    if not result.risks:
        return
    table = Table(title="held-out patients (slide only): predicted risk vs hidden phenotype")
    for col in ("case_id", "risk", "group", "phenotype (truth)", "months", "censored", "status"):
        table.add_column(col)
    for r in sorted(result.risks, key=lambda r: r.get("risk", float("inf"))):
        table.add_row(r["case_id"], _fmt(r.get("risk"), 4), str(r.get("risk_group", "")), _fmt(r.get("phenotype")),
                      _fmt(r.get("survival_months"), 1), _fmt(r.get("censorship"), 0), r.get("status", ""))
    console.print(table)
    rs = result.risk_summary
    if rs.get("span") is not None:
        console.print(f"held-out risks span {rs['span']:.3f}; Spearman(risk, hidden phenotype) = "
                      f"{_fmt(rs.get('spearman'), 2)}")
    console.print("higher risk = worse prognosis; higher phenotype = more dense dark-nuclei tissue = "
                  "shorter survival in this synthetic cohort")


def _print_outputs(console, result) -> None:  # noqa: ANN001
    console.print(f"outputs under [bold]{result.out}[/]")
    for name, path in result.outputs.items():
        if not name.startswith("input:"):
            console.print(f"  {name}: {path}")
    for p in result.km_plots:
        console.print(f"  Kaplan-Meier plot: {p}")
    if result.heatmaps:
        case_dirs = sorted({p.parent.parent if p.parent.name == "top" else p.parent for p in result.heatmaps})
        console.print(f"  heatmaps: {len(result.heatmaps)} PNGs (morphology attention, association per gene family, "
                      f"top patches per family) in:")
        for d in case_dirs:
            morph = sorted(d.glob("*morphology*.png"))
            console.print(f"    {d}/" + (f"  e.g. {morph[0].name}" if morph else ""))


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits else f"{value:.0f}"
    return str(value)
