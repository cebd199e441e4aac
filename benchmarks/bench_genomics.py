"""Benchmark genomics preprocessing: t-test selection (5 folds, 400 cases x ~3,000 features), the whole
`preprocess_genomics` run on an MCAT table of that size, and DESeq2 on 400 cases x ~2,000 genes per fold.

Prints a markdown table (min / median over repeats). Usage: .venv/bin/python benchmarks/bench_genomics.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghanet_pipeline.demo.cohort import make_cohort, write_cohort_tables  # noqa: E402
from ghanet_pipeline.genomics.bins import assign_bins, fit_bin_edges  # noqa: E402
from ghanet_pipeline.genomics.folds import make_folds  # noqa: E402
from ghanet_pipeline.genomics.pipeline import GenomicsConfig, preprocess_genomics  # noqa: E402
from ghanet_pipeline.genomics.selection import deseq2_select, risk_groups, ttest_select, welch_ttest  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts)


def fold_groups(cases, train):
    tr = cases.loc[train]
    t = cases["survival_months"].to_numpy()
    edges = fit_bin_edges(tr["survival_months"], tr["censorship"], t.min(), t.max())
    return risk_groups(assign_bins(tr["survival_months"], edges), tr["censorship"].to_numpy())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 repeat, DESeq2 with 1 process only")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    reps = 1 if args.quick else 3
    rows = []

    # ---- t-test: 400 cases, ~3,000 features (MCAT-style table) --------------------------------
    c = make_cohort(n_cases=400, seed=0, genes_per_family=(290, 300), n_noise_genes=0)
    x = c.table.drop_duplicates("case_id").set_index("case_id")
    x = x[[col for col in x.columns if col.endswith(("_rnaseq", "_cnv", "_mut"))]].astype(float)
    cases = c.cases
    folds = make_folds(cases, 5, seed=0)
    groups = [fold_groups(cases, tr) for tr, _ in folds]

    def ttest_5_folds():
        for (tr, _), (hi, lo) in zip(folds, groups, strict=False):
            ttest_select(x.loc[tr], hi, lo)

    mn, md = timed(ttest_5_folds, reps)
    rows.append((f"t-test selection, 5 folds, 400 cases x {x.shape[1]} features", mn, md))

    tr, _ = folds[0]
    hi, lo = groups[0]
    a, b = x.loc[tr].to_numpy()[hi], x.loc[tr].to_numpy()[lo]
    mn_v, _ = timed(lambda: welch_ttest(a, b), reps)
    t0 = time.perf_counter()
    for j in range(a.shape[1]):
        stats.ttest_ind(a[:, j], b[:, j], equal_var=False)
    loop = time.perf_counter() - t0
    rows.append((f"Welch t-test, 1 fold, {a.shape[1]} features: vectorised", mn_v, mn_v))
    rows.append((f"Welch t-test, 1 fold: scipy per column (reference) = {loop / mn_v:.0f}x slower", loop, loop))

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_cohort_tables(c, tmp)
        cfg = GenomicsConfig(table=str(paths["table"]), families=str(paths["families"]), folds=5)
        mn, md = timed(lambda: preprocess_genomics(cfg, Path(tmp) / "out", overwrite=True), reps)
        rows.append(("whole preprocess-genomics (read .csv.zip, 5 folds ttest, targets, outputs)", mn, md))

    # ---- DESeq2: 400 cases, ~2,000 genes, one fold (320 training cases) --------------------------
    c = make_cohort(n_cases=400, seed=1, genes_per_family=(330, 340), n_noise_genes=0)
    cases = c.cases
    counts = c.counts.T.loc[cases.index]
    tr, _ = make_folds(cases, 5, seed=0)[0]
    hi, lo = fold_groups(cases, tr)
    for n_cpus in ((1,) if args.quick else (1, 2)):
        mn, md = timed(lambda n_cpus=n_cpus: deseq2_select(counts.loc[tr], hi, lo, n_cpus=n_cpus), 1 if args.quick else 2)
        rows.append((f"DESeq2 (pydeseq2), 1 fold: {len(tr)} training cases ({int(hi.sum())} high / "
                     f"{int(lo.sum())} low) x {counts.shape[1]} genes, n_cpus={n_cpus}", mn, md))

    print("| genomics step | min s | median s |")
    print("|---|---:|---:|")
    for name, mn, md in rows:
        print(f"| {name} | {mn:.3f} | {md:.3f} |")


if __name__ == "__main__":
    main()
