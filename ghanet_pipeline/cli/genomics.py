"""``ghanet preprocess-genomics``: gene families, survival bins, per-fold gene selection and targets."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..genomics.config import DE_METHODS, GenomicsConfig
from .common import default_of, no_progress_option, out_option, overwrite_option, preset_option, protocol_option


@click.command("preprocess-genomics")
@click.option("--table", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="MCAT-style table (.csv/.csv.zip: case_id, slide_id, survival_months, censorship, "
                   "<GENE>_rnaseq|_cnv|_mut), or a raw counts matrix (CSV/TSV) when --clinical is given.")
@click.option("--clinical", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Clinical table for a counts matrix: case_id, survival_months, censorship (1 = censored) "
                   "or event (1 = death).")
@click.option("--families", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Gene families CSV: one column per family (header = name, order = token order).")
@click.option("--splits", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of MCAT splits_<k>.csv (columns train, val). Default: make --folds folds.")
@click.option("--folds", type=click.IntRange(min=2), default=default_of(GenomicsConfig, "folds"), show_default=True,
              help="Number of patient-level folds, stratified by (time bin x event), when --splits is not given.")
@protocol_option
@preset_option
@click.option("--de-method", type=click.Choice(DE_METHODS), default=None,
              help="auto: deseq2 on raw integer counts, else Welch t-test. Default: auto (protocol ghanet), "
                   "ttest (official), none (--preset tcga_ucec).")
@click.option("--bins-from", type=click.Choice(["train", "cohort"]), default=None,
              help="Fit the 4 survival-bin edges on each training fold, or on all cases (reference code). "
                   "Default: train (protocol ghanet), cohort (official).")
@click.option("--ttest-groups", type=click.Choice(["cases", "loader"]), default=None,
              help="t-test risk groups: cases = each training case once (protocol ghanet); loader = the cases "
                   "drawn by one pass of the authors' class-balanced, with-replacement loader (official).")
@click.option("--seed", type=int, default=default_of(GenomicsConfig, "seed"), show_default=True,
              help="Seed of the fold assignment and, with --protocol official, of the t-test's loader draw "
                   "(the authors' default seed is 1).")
@click.option("--padj", type=float, default=default_of(GenomicsConfig, "padj"), show_default=True, help="DESeq2: keep padj < this.")
@click.option("--lfc", type=float, default=None,
              help="DESeq2: keep |log2 fold change| >= this. Default: 1.0 (protocol ghanet), 0 (official: "
                   "padj only, as the paper states).")
@click.option("--pvalue", type=float, default=default_of(GenomicsConfig, "pvalue"), show_default=True,
              help="t-test: keep p < this (uncorrected, the reference protocol).")
@click.option("--impute", type=click.Choice(["none", "train-mean"]), default=default_of(GenomicsConfig, "impute"), show_default=True,
              help="Missing values: none = error; train-mean = each fold's training mean.")
@click.option("--n-cpus", type=click.IntRange(min=1), default=default_of(GenomicsConfig, "n_cpus"), show_default=True,
              help="Processes for DESeq2.")
@out_option
@overwrite_option
@no_progress_option
def preprocess_genomics(table: Path, clinical: Path | None, families: Path, splits: Path | None, folds: int,
                        protocol: str, preset: str | None, de_method: str | None, bins_from: str | None,
                        ttest_groups: str | None, seed: int, padj: float, lfc: float | None, pvalue: float,
                        impute: str, n_cpus: int, out: Path, overwrite: bool,
                        no_progress: bool) -> None:
    """Select the genes of each family that differ between high- and low-risk training patients (per
    fold) and write standardised reconstruction targets under <out>/genomics/.

    Folds are reported as they finish (no progress bar: the stage takes seconds); --no-progress is
    accepted for the same command lines as the other stages."""
    from rich.console import Console
    from rich.table import Table

    from ..genomics.pipeline import preprocess_genomics as run
    from .common import finish, print_summary

    cfg = GenomicsConfig(table=str(table), families=str(families), clinical=str(clinical) if clinical else None,
                         splits=str(splits) if splits else None, folds=folds, de_method=de_method,
                         bins_from=bins_from, seed=seed, padj=padj, lfc=lfc, pvalue=pvalue, impute=impute,
                         n_cpus=n_cpus, protocol=protocol, preset=preset, ttest_groups=ttest_groups)
    console = Console(width=None if sys.stdout.isatty() else 160)
    with console.status("preprocessing genomics ...") if sys.stdout.isatty() else _null():
        res = run(cfg, out, overwrite=overwrite)

    console.print(f"protocol: [bold]{cfg.protocol}[/]" + (f"  preset: [bold]{cfg.preset}[/]" if cfg.preset else "")
                  + f"  bins from: {cfg.bins_from}  t-test groups: {cfg.ttest_groups}")
    console.print(f"input: [bold]{res.kind}[/]  selection: [bold]{res.de_method}[/] ({res.de_reason})")
    fam = Table(title="Gene families (listed genes found in the data)")
    for col in ("family", "listed", "found", "features"):
        fam.add_column(col, justify="left" if col == "family" else "right")
    for m in res.matches:
        style = "" if m.features else "[yellow]"
        fam.add_row(f"{style}{m.name}", str(m.listed_genes), str(m.found_genes), str(len(m.features)))
    console.print(fam)
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    print_summary("preprocess-genomics folds", res.results,
                  [("selected", "selected"), ("of", "of"), ("empty families", "empty fam."),
                   ("high", "high-risk"), ("low", "low-risk")])
    if len(res.summary):
        wide = res.summary.pivot(index="family", columns="fold", values="features_after")
        order = [m.name for m in res.matches]
        folds_cols = [c for c in wide.columns if c != "mean"] + (["mean"] if "mean" in wide.columns else [])
        t1 = Table(title="Features per family before / after selection (Table 1)")
        t1.add_column("family")
        t1.add_column("before", justify="right")
        for c in folds_cols:
            t1.add_column(f"fold {c}" if c != "mean" else "mean", justify="right")
        before = {m.name: len(m.features) for m in res.matches}
        for name in order:
            vals = [wide.loc[name, c] for c in folds_cols]
            t1.add_row(name, str(before[name]),
                       *[f"{v:.1f}" if c == "mean" else f"{int(v)}" for c, v in zip(folds_cols, vals, strict=False)])
        console.print(t1)
    console.print(f"outputs: {res.out_dir}  (summary.csv, fold_<k>/...)  log: {res.log_path}")
    finish(res.results)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
