"""Benchmark genomics preprocessing: t-test selection (5 folds, 400 cases x ~3,000 features), the whole
`preprocess_genomics` run on an MCAT table of that size, and DESeq2 on 400 cases x ~2,000 genes per fold.

Usage: python -m benchmarks.bench_genomics [--quick]    (min / median over 3 repeats; --quick: 1 repeat,
DESeq2 with 1 process only). Record: bench ``genomics``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Bench, add_record_args, stats, timed


def fold_groups(cases, train):  # noqa: ANN001, ANN201 - pandas frames
    from ghanet_pipeline.genomics.bins import assign_bins, fit_bin_edges
    from ghanet_pipeline.genomics.selection import risk_groups

    tr = cases.loc[train]
    t = cases["survival_months"].to_numpy()
    edges = fit_bin_edges(tr["survival_months"], tr["censorship"], t.min(), t.max())
    return risk_groups(assign_bins(tr["survival_months"], edges), tr["censorship"].to_numpy())


def ttest_rows(bench: Bench, reps: int) -> None:
    """t-test selection on an MCAT-style table (400 cases, ~3,000 features), and the whole preprocess run."""
    from scipy import stats as sps

    from ghanet_pipeline.demo.cohort import make_cohort, write_cohort_tables
    from ghanet_pipeline.genomics.config import GenomicsConfig
    from ghanet_pipeline.genomics.folds import make_folds
    from ghanet_pipeline.genomics.pipeline import preprocess_genomics
    from ghanet_pipeline.genomics.selection import ttest_select, welch_ttest

    c = make_cohort(n_cases=400, seed=0, genes_per_family=(290, 300), n_noise_genes=0)
    x = c.table.drop_duplicates("case_id").set_index("case_id")
    x = x[[col for col in x.columns if col.endswith(("_rnaseq", "_cnv", "_mut"))]].astype(float)
    folds = make_folds(c.cases, 5, seed=0)
    groups = [fold_groups(c.cases, tr) for tr, _ in folds]

    def ttest_5_folds() -> None:
        for (tr, _), (hi, lo) in zip(folds, groups, strict=True):
            ttest_select(x.loc[tr], hi, lo)

    bench.row(step=f"t-test selection, 5 folds, 400 cases x {x.shape[1]} features", seconds=timed(ttest_5_folds, reps)[0])
    tr, _ = folds[0]
    hi, lo = groups[0]
    a, b = x.loc[tr].to_numpy()[hi], x.loc[tr].to_numpy()[lo]
    vec = timed(lambda: welch_ttest(a, b), reps)[0]
    t0 = time.perf_counter()
    for j in range(a.shape[1]):
        sps.ttest_ind(a[:, j], b[:, j], equal_var=False)
    loop = time.perf_counter() - t0
    bench.row(step=f"Welch t-test, 1 fold, {a.shape[1]} features: vectorised", seconds=vec)
    bench.row(step="Welch t-test, 1 fold: scipy per column (reference)", seconds=stats([loop]),
              slower=loop / vec.min)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_cohort_tables(c, tmp)
        cfg = GenomicsConfig(table=str(paths["table"]), families=str(paths["families"]), folds=5)
        secs = timed(lambda: preprocess_genomics(cfg, Path(tmp) / "out", overwrite=True), reps)[0]
    bench.row(step="whole preprocess-genomics (read .csv.zip, 5 folds t-test, targets, outputs)", seconds=secs)


def deseq2_rows(bench: Bench, quick: bool) -> None:
    """DESeq2 on one fold: 400 cases, ~2,000 genes (320 training cases), with 1 (and 2) processes."""
    from ghanet_pipeline.demo.cohort import make_cohort
    from ghanet_pipeline.genomics.folds import make_folds
    from ghanet_pipeline.genomics.selection import deseq2_select

    c = make_cohort(n_cases=400, seed=1, genes_per_family=(330, 340), n_noise_genes=0)
    counts = c.counts.T.loc[c.cases.index]
    tr, _ = make_folds(c.cases, 5, seed=0)[0]
    hi, lo = fold_groups(c.cases, tr)
    for n_cpus in ((1,) if quick else (1, 2)):
        secs = timed(lambda n_cpus=n_cpus: deseq2_select(counts.loc[tr], hi, lo, n_cpus=n_cpus), 1 if quick else 2)[0]
        bench.row(step=f"DESeq2 (pydeseq2), 1 fold: {len(tr)} training cases ({int(hi.sum())} high / {int(lo.sum())} "
                       f"low) x {counts.shape[1]} genes, n_cpus={n_cpus}", seconds=secs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat, DESeq2 with 1 process only")
    add_record_args(ap)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    with Bench("genomics", "Genomics preprocessing on a synthetic 400-case cohort", args,
               units={"seconds": "s", "slower": "x"}, labels={"step": "genomics step", "slower": "vs vectorised"}) as bench:
        ttest_rows(bench, 1 if args.quick else 3)
        deseq2_rows(bench, args.quick)


if __name__ == "__main__":
    main()
