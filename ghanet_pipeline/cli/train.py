"""``ghanet train``: k-fold training of G-HANet (or ABMIL) on case bags; prints the c-index table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..training.config import TrainConfig
from .common import (
    RegistryChoice,
    default_of,
    device_option,
    manifest_option,
    model_names,
    no_progress_option,
    out_option,
    overwrite_option,
    parse_folds,
    preset_option,
    protocol_option,
)
from .report import after_stage, no_report_option


@click.command("train")
@click.option("--features", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding the .h5 bags (e.g. <out>/features/resnet50_trunc_256).")
@click.option("--genomics", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output of preprocess-genomics (<out>/genomics): folds, bins, labels, gene targets. "
                   "Default: <out>/genomics. ABMIL uses only its folds and labels.")
@out_option
@click.option("--model", type=RegistryChoice(model_names), default=default_of(TrainConfig, "model"), show_default=True,
              help="ghanet = G-HANet; abmil = gated-attention MIL baseline (no gene reconstruction).")
@click.option("--run-name", default=None, help="Sub-folder of <out>/train/ (default: the model name).")
@click.option("--folds", "folds_text", default=None, metavar="0,1,...", help="Folds to train (default: all).")
@protocol_option
@preset_option
@click.option("--epochs", type=click.IntRange(min=1), default=default_of(TrainConfig, "epochs"), show_default=True)
@click.option("--lr", type=float, default=None,
              help="Adam learning rate. Default: 2e-4, or the --preset's (1e-4 for tcga_ucec).")
@click.option("--weight-decay", type=float, default=default_of(TrainConfig, "weight_decay"), show_default=True)
@click.option("--accum", type=click.IntRange(min=1), default=default_of(TrainConfig, "accum"), show_default=True,
              help="Cases per optimiser step (gradient accumulation; one case per forward pass).")
@click.option("--alpha", type=float, default=default_of(TrainConfig, "alpha"), show_default=True,
              help="Weight of the gene-reconstruction (distillation) loss (MSE + SCE, summed over families); "
                   "0 trains the same network on survival alone (the no-distillation ablation).")
@click.option("--topk", type=click.FloatRange(min=0, max=100, min_open=True), default=None,
              help="Percent of patches kept per family for the genomic attention weights. Default: 20, or "
                   "the --preset's (15 BRCA/GBMLGG, 30 UCEC). Rounded up (ghanet) or down with ties "
                   "(official; bags with fewer than 100/topk patches are then refused).")
@click.option("--topk-rule", type=click.Choice(["ceil", "floor"]), default=None,
              help="Top-k count: ceil = ceil(topk x N), at least 1 (protocol ghanet); floor = int(N x topk) "
                   "keeping ties, as the authors' code (official).")
@click.option("--accumulation", type=click.Choice(["epoch", "carry-over"]), default=None,
              help="epoch = gradients zeroed at each epoch start, partial step at its end (protocol ghanet); "
                   "carry-over = the leftover joins the next epoch's first step (official).")
@click.option("--alpha-surv", type=click.FloatRange(min=0, max=1), default=default_of(TrainConfig, "alpha_surv"),
              show_default=True,
              help="Extra weight of the uncensored NLL term.")
@click.option("--dim", type=click.IntRange(min=8), default=default_of(TrainConfig, "dim"), show_default=True,
              help="Model width d.")
@click.option("--dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=default_of(TrainConfig, "dropout"),
              show_default=True)
@click.option("--max-patches", type=click.IntRange(min=1), default=None,
              help="Random subsample of at most this many patches per training step (default: all).")
@click.option("--seed", type=int, default=default_of(TrainConfig, "seed"), show_default=True)
@click.option("--select", type=click.Choice(["final", "best-epoch"]), default=None,
              help="Reported epoch. best-epoch = chosen on the validation fold (authors' protocol; optimistic). "
                   "Default: final (protocol ghanet), best-epoch (official).")
@device_option
@manifest_option
@click.option("--case-id-from", type=click.Choice(["tcga"]), default=None,
              help="Case id = first 12 characters of the bag name (TCGA barcodes). Not needed with an MCAT table: "
                   "its case_id and slide_id columns map the bags (a slide's id is its file name up to the first dot).")
@click.option("--slide-types", default=None, metavar="DX[,TS,BS,MS]",
              help="Use only bags of these TCGA slide types (DX = diagnostic FFPE slides; TS/BS/MS = frozen "
                   "sections). Default: every bag.")
@click.option("--cache-gb", type=click.FloatRange(min=0), default=default_of(TrainConfig, "cache_gb"), show_default=True,
              help="Keep bags in memory up to this many GiB (float32); the rest are re-read from disk each step.")
@click.option("--resume", is_flag=True, help="Continue interrupted folds from their last saved epoch (finished folds "
                                            "are always skipped when the options match).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="CPU threads for torch (0 = torch's default). Small bags on a busy machine train faster with 1.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=default_of(TrainConfig, "precision"),
              show_default=True,
              help="Arithmetic of the forward passes: bf16 = autocast (matrix products in bfloat16; weights, "
                   "gradients and optimiser state stay float32). auto = fp32 today (see docs/fidelity.md).")
@click.option("--allow-mixed-precision", is_flag=True,
              help="Train on int8 bags together with fp32/bf16 bags (refused by default: int8 features differ "
                   "from fp32 ones by more than round-off).")
@overwrite_option
@no_progress_option
@no_report_option
def train(features: Path, genomics: Path | None, out: Path, model: str, run_name: str | None, folds_text: str | None,
          protocol: str, preset: str | None, epochs: int, lr: float | None, weight_decay: float, accum: int,
          alpha: float, topk: float | None, topk_rule: str | None, accumulation: str | None, alpha_surv: float,
          dim: int, dropout: float, max_patches: int | None,
          seed: int, select: str | None, device: str,
          manifest: Path | None, case_id_from: str | None, slide_types: str | None, cache_gb: float, resume: bool,
          threads: int, precision: str, allow_mixed_precision: bool, overwrite: bool, no_progress: bool,
          no_report: bool) -> None:
    """Train G-HANet (or ABMIL) with the folds of preprocess-genomics; write checkpoints and reports.

    Outputs in <out>/train/<run>/: config.json, fold_<k>/ (model.safetensors, model.json, history.json),
    predictions.csv, metrics.json, km.png, spearman.png, learning_curves.png; then the report
    <out>/report/ (`ghanet report`) unless --no-report.
    """
    import logging

    from ..core.errors import ConfigError
    from ..training.cv import train_cv
    from ..wsi.tcga import parse_slide_types
    from .common import StepBars

    if threads:
        import torch

        torch.set_num_threads(threads)

    genomics = genomics or out / "genomics"
    if not genomics.is_dir():
        raise ConfigError(f"genomics folder {genomics} not found; run `ghanet preprocess-genomics` first or pass "
                          f"--genomics (ABMIL needs it too: it holds the folds and survival labels)")
    config = TrainConfig(model=model, epochs=epochs, lr=lr, weight_decay=weight_decay, accum=accum, alpha=alpha,
                         topk=None if topk is None else topk / 100.0, alpha_surv=alpha_surv, dim=dim,
                         dropout=dropout, max_patches=max_patches, seed=seed, folds=parse_folds(folds_text),
                         select=select, device=device, case_id_from=case_id_from, protocol=protocol,
                         preset=preset, topk_rule=topk_rule, accumulation=accumulation, cache_gb=cache_gb,
                         slide_types=parse_slide_types(slide_types), allow_mixed_precision=allow_mixed_precision,
                         precision=precision)
    log = logging.getLogger("ghanet_pipeline")
    with StepBars(disable=no_progress) as bars:
        def progress(kind: str, **info: Any) -> None:
            if kind == "fold_start":
                bars.start(info["epochs"], f"fold {info['fold']}")
            elif kind == "resume" and bars.bar is not None:
                bars.bar.advance(info["epoch"], note="(resumed)")
            elif kind == "epoch" and bars.bar is not None:
                vc = info.get("val_c_index")
                bars.bar.advance(1, note=f"loss {info['train_loss']:.3f} val c-index "
                                         f"{'n/a' if vc is None else f'{vc:.3f}'}")
            elif kind == "fold_done":
                bars.close()
                res = info["result"]
                log.info("fold %s: %s", info["fold"], res.status if res.ok else res.message)

        result = train_cv(features, genomics, out, config, run_name=run_name, manifest=manifest, resume=resume,
                          overwrite=overwrite, progress=progress)
    _print_table(result)
    from ..core.runs import exit_code

    report_ok = after_stage(out, no_report)
    sys.exit(exit_code(result.folds) or (0 if report_ok else 1))


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _print_table(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result.metrics or {}
    optimistic = bool(m.get("optimistic"))
    title = f"c-index per validation fold — {result.run_dir}"
    if optimistic:
        title += "\n[red]OPTIMISTIC: epoch selected on the validation fold[/]"
    table = Table(title=title)
    for col, just in (("fold", "left"), ("status", "left"), ("epoch", "right"), ("val cases", "right"),
                      ("c-index", "right"), ("s", "right"), ("message", "left")):
        table.add_column(col, justify=just, overflow="fold")
    per_fold = m.get("c_index_per_fold", {})
    for r in result.folds:
        k = r.item.replace("fold ", "")
        c = per_fold.get(k, r.metrics.get("val_c_index"))
        style = {"done": "green", "skipped": "cyan"}.get(r.status, "red")
        table.add_row(k, f"[{style}]{r.status}[/]", str(r.metrics.get("epoch", "")), str(r.metrics.get("n_val", "")),
                      _fmt(c), f"{r.seconds:.1f}", r.message if not r.ok else
                      ("resumed: already finished" if r.status == "skipped" else ""))
    shown = {r.item.replace("fold ", "") for r in result.folds}
    for k, c in per_fold.items():
        if k not in shown:  # finished by an earlier command in this run directory
            table.add_row(k, "[cyan]earlier[/]", str(m.get("selected_epochs", {}).get(k, "")), "", _fmt(c), "",
                          "trained by an earlier command")
    if m:
        table.add_section()
        table.add_row("mean ± std", "", "", str(m.get("n_cases", "")),
                      f"{_fmt(m.get('c_index_mean'))} ± {_fmt(m.get('c_index_std'))}", "", "")
        table.add_row("pooled", "", "", "", _fmt(m.get("c_index_pooled")), "",
                      f"log-rank p {_fmt(m.get('logrank_p'), '.3g')}")
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    sp = m.get("spearman_per_family") or {}
    if sp:
        console.print("gene reconstruction (Spearman per validation case, mean ± std): " + "; ".join(
            f"{fam} {_fmt(v.get('mean'), '.2f')} ± {_fmt(v.get('std'), '.2f')}" if v.get("mean") is not None
            else f"{fam} n/a" for fam, v in sp.items()))
    for w in (result.warnings or []):
        console.print(f"[yellow]warning:[/] {w}")
    if m:
        console.print(f"reports: {result.run_dir}/metrics.json, predictions.csv, km.png, learning_curves.png"
                      + (", spearman.png" if "spearman" in m.get("plots", {}) else ""))
