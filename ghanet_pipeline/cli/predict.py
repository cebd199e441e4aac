"""``ghanet predict``: risk score, risk group, survival curve and heatmaps from slides alone."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..inference.config import PredictConfig
from .common import (
    batch_size_option,
    default_of,
    device_option,
    engine_option,
    manifest_option,
    no_progress_option,
    num_workers_option,
    out_option,
    overwrite_option,
    parse_folds,
    shard_option,
    slides_argument,
)
from .report import after_stage, no_report_option


@click.command("predict")
@slides_argument
@click.option("--model", "model_dir", default=None, envvar="GHANET_MODEL", type=click.Path(path_type=Path),
              help="Training run folder (<out>/train/<run>/ with fold_<k>/ checkpoints) or one fold_<k>/ folder "
                   "[env GHANET_MODEL; default: the only training run under <out>/train/].")
@manifest_option
@out_option
@click.option("--folds", default=None, metavar="0,1,...", help="Fold models to ensemble (default: all in --model).")
@click.option("--features", "features_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of existing bags (<slide_id>.h5, ours or CLAM/TRIDENT): skip segmentation and extraction. "
                   "Without slide arguments every bag in it is a case.")
@click.option("--assume-encoder", is_flag=True,
              help="Accept --features bags without encoder attributes (CLAM/TRIDENT) as made with the model's "
                   "encoder and weights (cannot be checked).")
@click.option("--heatmaps", is_flag=True,
              help="Write attention/association heatmaps and top patches under <out>/predict/heatmaps/<case>/.")
@device_option
@engine_option
@click.option("--weights", default=None, metavar="PATH|random[:seed]",
              help="Encoder weights; must be the ones the model was trained with (default: torch hub cache).")
@batch_size_option(default_of(PredictConfig, "batch_size"))
@num_workers_option(default_of(PredictConfig, "num_workers"))
@overwrite_option
@no_progress_option
@shard_option
@no_report_option
def predict(slides: tuple[str, ...], recursive: bool, mpp: float | None, case_id_from: str | None,
            gdc_manifest: Path | None, slide_types: str | None, model_dir: Path | None,
            manifest: Path | None, out: Path, folds: str | None, features_dir: Path | None, assume_encoder: bool,
            heatmaps: bool, device: str, engine: str, weights: str | None, batch_size: int, num_workers: int,
            overwrite: bool, no_progress: bool, shard: str | None, no_report: bool) -> None:
    """Predict a risk score per case from SLIDE files (slides of one manifest case_id are pooled).

    Writes <out>/predict/<case_id>.json as each case finishes (reused by a rerun with the same model
    and input files), then rebuilds <out>/predict/predictions.csv from every case's JSON; with
    --heatmaps also <out>/predict/heatmaps/<case_id>/, then the report <out>/report/ (`ghanet report`; a
    deep-zoom page per slide, with the attention layers when --heatmaps). Several processes (--shard i/n,
    two terminals) may write into one --out. Exit 0 when every case got a score or had no tissue, 1 when
    a case or a report page failed (the others still run), 2 on a usage error.
    """
    from ..inference.loading import default_model
    from ..inference.predict import predict_cases
    from ..wsi.gather import gather_slides
    from ..wsi.inputs import parse_shard
    from .common import Progress

    fold_list = parse_folds(folds)
    shard_ij = parse_shard(shard)
    if model_dir is None:
        model_dir = default_model(out)
        click.echo(f"using model {model_dir} (the only training run under {out / 'train'}; --model picks another)",
                   err=True)
    specs = (gather_slides(slides, manifest, recursive, case_id_from, mpp, out=out, gdc_manifest=gdc_manifest,
                           slide_types=slide_types)
             if (slides or manifest is not None or features_dir is None) else [])
    config = PredictConfig(out=out, folds=fold_list, features_dir=features_dir, assume_encoder=assume_encoder,
                           heatmaps=heatmaps, device=device, weights=weights, batch_size=batch_size,
                           num_workers=num_workers, overwrite=overwrite, shard=shard_ij, engine=engine)
    n_cases = len({s.case_id for s in specs}) if specs else 0
    if shard_ij is not None and n_cases:
        n_cases = len(range(shard_ij[0], n_cases, shard_ij[1]))
    with Progress(max(n_cases, 1), "predict", disable=no_progress) as bar:
        run = predict_cases(specs, model_dir, config, on_case=lambda p: bar.advance(1, p.case_id))
    _render(run)
    slide_files = [s for s in specs if Path(s.path).suffix.lower() not in (".h5", ".pt")]
    report_ok = after_stage(out, no_report, slide_paths={s.slide_id: Path(s.path) for s in slide_files},
                            slide_mpp={s.slide_id: float(s.mpp) for s in slide_files if s.mpp is not None})
    sys.exit(0 if all(c.ok for c in run.cases) and report_ok else 1)


def _render(run) -> None:  # noqa: ANN001 - PredictionRun
    from rich.console import Console
    from rich.table import Table

    cases = run.cases
    edges = next((c.bin_edges_months for c in cases if c.bin_edges_months), None)
    table = Table(title=f"ghanet predict - ensemble of folds {','.join(map(str, run.ensemble_folds))}")
    for col, just in (("case", "left"), ("status", "left"), ("risk", "right"), ("spread (min..max)", "right"),
                      ("group (margin; threshold; folds high)", "left")):
        table.add_column(col, justify=just)
    n_bins = len(edges) - 1 if edges else 0
    for j in range(n_bins):
        table.add_column(f"S({edges[j + 1]:.1f} mo)", justify="right")
    for col in ("patches", "s seg/ext/model", "message"):
        table.add_column(col, justify="right" if col != "message" else "left", overflow="fold")
    styles = {"done": "green", "failed": "red", "no tissue": "yellow"}
    for c in cases:
        if c.risk is not None:
            risk = f"{c.risk:.3f}" + (f" ± {c.risk_std:.3f}" if c.risk_std is not None else "")
            spread = f"{c.risk_min:.3f}..{c.risk_max:.3f}"
            colour = "red" if c.risk_group == "high" else "cyan"
            group = f"[{colour}]{c.risk_group}[/] ({c.risk - c.threshold:+.2g}; {c.threshold:.3f}; {c.folds_high}/{c.n_folds})"
        else:
            risk = spread = group = ""
        surv = [f"{v:.2f}" for v in c.survival] if c.survival else [""] * n_bins
        secs = "/".join(f"{c.seconds.get(k, 0.0):.1f}" for k in ("segment", "extract", "model"))
        msg = ("reused (same model and input files) " if c.reused else "") + (
            c.message or "; ".join(n for n in c.notes if "RANDOM" not in n))
        table.add_row(c.case_id, f"[{styles.get(c.status, 'white')}]{c.status}[/]", risk, spread, group, *surv,
                      str(c.n_patches), secs, msg)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    console.print(f"risk = -sum(S) (higher = worse); group: high when the mean risk is above the mean of the folds' "
                  f"training median risks. Written: {run.predictions_csv} and one <case_id>.json per case.")
    if any("RANDOM" in n for c in cases for n in c.notes):
        console.print("[yellow]warning:[/] the encoder uses random weights (tests/demos only): scores carry no "
                      "clinical meaning")
    n_failed = sum(not c.ok for c in cases)
    if n_failed:
        console.print(f"[red]{n_failed} of {len(cases)} case(s) failed[/] (see the message column and {run.log_path})")
