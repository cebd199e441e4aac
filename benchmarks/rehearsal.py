"""Cohort rehearsal: every case of a real MCAT-format table, laid out as a gdc-client download, through every
stage with the commands the docs print; wall time, peak memory and disk per stage, and a full-cohort projection.

What it builds under ``--work`` (check ``df`` first: the bags need ~41 MB per slide at 10,000 patches):

- ``gdc-download/``: ``<file uuid>/<slide_id of the table>`` + ``logs/*.parcel`` + ``MANIFEST.txt`` (sizes, MD5)
  for every slide of the chosen cases; the slide files are small synthetic slides (``--slide-px``), so
  ``segment`` and ``extract-features`` run the real code on real names, not real pixels;
- ``ghanet-out/features/rehearsal_real_size/``: one bag per slide with ``--patches`` patches of 1024 features
  (float32, written directly: the size of a real 20x TCGA slide's bag), for genomics, train and predict.

Stages, each a whole ``ghanet`` process (wall time, peak RSS of its largest process): segment and extract
(``--recursive --slide-types DX`` over the download: the GDC check reads every file's MD5 once), extract
rate (one 6144 px slide alone: patches/s of this CPU), genomics (the table, its MCAT splits when given),
train (``--folds`` x ``--epochs`` on the real-size bags, ``--cache-gb`` of them in memory, the rest re-read
from disk every step), a disk-vs-cache probe (fold 0, one epoch, on ``--probe-cases`` cases, with
``--cache-gb 0`` and with every bag cached), predict (``--predict-cases`` cases from their bags).
The projection scales the measured rates to ``--project-slides`` slides x ``--patches`` patches and
``--project-epochs`` epochs x ``--project-folds`` folds (default: TCGA-BLCA, 437 slides, 20 epochs, 5 folds), on this CPU and, given
``--gpu-log`` (the saved output of ``bash benchmarks/gpu_check.sh``), extraction on one GPU.

Usage (a quick look; the full-size command is in docs/benchmarks.md), with MCAT's LUAD files
(``datasets_csv_sig/tcga_luad_all_clean.csv.zip``, ``datasets_csv_sig/signatures.csv``,
``splits/5foldcv/tcga_luad/``):
  python benchmarks/rehearsal.py --table tcga_luad_all_clean.csv.zip --families signatures.csv \\
      --splits tcga_luad_splits --work /scratch/rehearsal --cases 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BAG_DIR = "rehearsal_real_size"
#: runs a command and records its exit code and the peak RSS of its largest process (KiB, Linux)
_LAUNCH = ("import json, resource, subprocess, sys\n"
           "rc = subprocess.run(sys.argv[2:]).returncode\n"
           "json.dump({'rc': rc, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss},"
           " open(sys.argv[1], 'w'))\n")


@dataclass
class Stage:
    name: str
    seconds: float
    peak_rss_mb: float | None = None
    rc: int = 0
    note: str = ""


def ghanet() -> list[str]:
    """The `ghanet` beside this Python, as a user types it (else ``python -m ghanet_pipeline``)."""
    exe = Path(sys.executable).parent / "ghanet"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ghanet_pipeline"]


def run(name: str, args: list[str], work: Path, ok: tuple[int, ...] = (0,)) -> Stage:
    """One stage as a whole process; its output goes to ``<work>/logs/<name>.log``."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    side = work / "logs" / f"{name}.rss.json"
    print(f"[{time.strftime('%H:%M:%S')}] {name}: ghanet {' '.join(args)}", flush=True)
    t = time.perf_counter()
    with open(work / "logs" / f"{name}.log", "w") as log:
        subprocess.run([sys.executable, "-c", _LAUNCH, str(side), *ghanet(), *args], cwd=work, stdout=log,
                       stderr=subprocess.STDOUT, check=False, env={**os.environ, "COLUMNS": "200"})
    secs = time.perf_counter() - t
    rec = json.loads(side.read_text())
    if rec["rc"] not in ok:
        raise SystemExit(f"stage {name} exited {rec['rc']}; see {work / 'logs' / f'{name}.log'}")
    return Stage(name, round(secs, 1), round(rec["maxrss_kb"] / 1024, 1), rec["rc"])


def _slide(args: tuple[str, int, int]) -> None:
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    path, side, i = args
    write_synthetic_slide(Path(path), side, side, phenotype=(i % 5) / 4, seed=i)


def layout(rows, work: Path, side: int, jobs: int) -> Stage:
    """The gdc-client download of the chosen rows' slides (synthetic pixels, real names)."""
    from ghanet_pipeline.demo.gdcdownload import file_uuid, write_gdc_download

    t = time.perf_counter()
    dl = work / "gdc-download"
    names = list(rows["slide_id"])
    todo = [(str(dl / file_uuid(n) / n), side, i) for i, n in enumerate(names)]
    for p, _, _ in todo:
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(jobs) as ex:
        list(ex.map(_slide, todo, chunksize=4))
    write_gdc_download(dl, names, lambda p, i: None)  # files exist: logs/, MANIFEST.txt with their MD5s
    return Stage("layout (not a ghanet stage)", round(time.perf_counter() - t, 1), note=f"{len(names)} slide files")


def write_real_size_bags(slide_ids: list[str], folder: Path, patches: int) -> Stage:
    """One bag per slide: ``patches`` x 1024 float32 non-negative features (random), real ghanet attrs."""
    from ghanet_pipeline.demo.bags import bag_attrs
    from ghanet_pipeline.features.bags import write_bag

    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(patches)))
    idx = np.arange(patches)
    coords = np.stack([(idx % side) * 512, (idx // side) * 512], axis=1).astype(np.int64)
    for sid in slide_ids:
        if (folder / f"{sid}.h5").is_file():
            continue
        feats = rng.random((patches, 1024), dtype=np.float32)
        write_bag(folder / f"{sid}.h5", feats, coords, bag_attrs(sid))
    return Stage("real-size bags (not a ghanet stage)", round(time.perf_counter() - t, 1),
                 note=f"{len(slide_ids)} bags of {patches:,} patches")


def disk_needed(n_slides: int, patches: int) -> int:
    """Bytes the real-size bags take (features + coords + HDF5 overhead, measured: ~0.2 %)."""
    return int(n_slides * patches * (1024 * 4 + 16) * 1.01)


def epoch_seconds(run_dir: Path) -> list[float]:
    secs = []
    for h in sorted(run_dir.glob("fold_*/history.json")):
        secs += [float(e["seconds"]) for e in json.loads(h.read_text())["epochs"]]
    return secs


def gpu_rate(path: Path | None) -> float | None:
    """Best ``= N patches/s`` of a saved gpu_check.sh output (its extract-features lines), else None."""
    if path is None or not path.is_file():
        return None
    rates = [float(m) for m in re.findall(r"batch \d+: .*?= (\d+) patches/s", path.read_text())]
    return max(rates) if rates else None


def extract_rate(work: Path, out: str) -> tuple[Stage, float]:
    """patches/s of `extract-features` on one 6144 px slide alone (this CPU, random weights)."""
    from ghanet_pipeline.wsi.synthetic import write_synthetic_slide

    slide = work / "rate" / "rate_6144.svs"
    if not slide.exists():
        slide.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_slide(slide, 6144, 6144, phenotype=0.3, seed=7)
    run("rate-segment", ["segment", str(slide), "--out", f"{out}-rate", "--no-progress"], work)
    st = run("extract rate (6144 px slide)", ["extract-features", str(slide), "--out", f"{out}-rate", "--weights",
                                              "random", "--device", "cpu", "--no-progress", "--overwrite"], work)
    log = json.loads(sorted((work / f"{out}-rate" / "logs").glob("extract-features-*.json"))[-1].read_text())
    item = log["items"][0]
    rate = float(item["metrics"]["patches"]) / max(float(item["seconds"]), 1e-9)
    st.note = f"{item['metrics']['patches']} patches, {rate:.1f} patches/s (slide time, start-up excluded)"
    return st, rate


def probe(rows, work: Path, out: str, families: str, n_cases: int) -> list[Stage]:
    """Fold 0, one epoch, on ``n_cases`` cases: every bag re-read from disk (--cache-gb 0) vs all in memory."""
    from ghanet_pipeline.demo.gdcdownload import pick_cases, write_subtable

    sub = pick_cases(rows, n_cases, seed=3)
    table = write_subtable(sub, work / "probe_table.csv.zip")
    gdir = f"{out}-probe/genomics"
    run("probe genomics", ["preprocess-genomics", "--table", table.name, "--families", families, "--folds", "5",
                           "--de-method", "none", "--out", f"{out}-probe", "--no-progress"], work)
    stages = []
    for name, cache in (("probe: bags from disk (--cache-gb 0)", "0"), ("probe: bags cached (--cache-gb 64)", "64")):
        run_name = "probe_disk" if cache == "0" else "probe_cache"
        st = run(name, ["train", "--features", f"{out}/features/{BAG_DIR}", "--genomics", gdir, "--out", f"{out}-probe",
                        "--folds", "0", "--epochs", "1", "--cache-gb", cache, "--run-name", run_name, "--overwrite",
                        "--no-progress"], work)
        secs = epoch_seconds(work / f"{out}-probe" / "train" / run_name)
        st.note = f"epoch {secs[0]:.1f} s for {len(sub)} slides ({secs[0] / len(sub):.3f} s per slide)"
        stages.append(st)
    return stages


def projection(m: dict, args: argparse.Namespace) -> list[tuple[str, str]]:
    """The measured rates scaled to the projected cohort (lines of the report)."""
    n, p, e, k = args.project_slides, args.patches, args.project_epochs, args.project_folds
    bag = m["bag_bytes_mean"] * 10_000 / args.patches
    rows = [("bag size per 10,000 patches (1024 float32 features)", f"{bag / 1e6:.1f} MB"),
            (f"bags of {n} slides x {p:,} patches", f"{n * m['bag_bytes_mean'] / 1e9:.1f} GB")]
    cpu_ext = n * p / m["extract_rate"]
    rows.append((f"extract-features, {n * p:,} patches, this CPU", f"{cpu_ext / 3600:.1f} h ({m['extract_rate']:.1f} patches/s)"))
    if m.get("gpu_rate"):
        rows.append((f"extract-features, one GPU (gpu_check.sh: {m['gpu_rate']:.0f} patches/s)",
                     f"{n * p / m['gpu_rate'] / 3600:.2f} h"))
    else:
        rows.append(("extract-features, one GPU", "no gpu_check.sh figures given (--gpu-log)"))
    per = m["train_s_per_slide_epoch"]
    rows.append((f"train, {k} folds x {e} epochs, this CPU ({per:.3f} s per slide-epoch measured)",
                 f"{per * n * e * k / 3600:.1f} h"))
    rows.append(("segment (small synthetic slides: per-slide overhead only)", f"{m['segment_s_per_slide'] * n / 60:.1f} min"))
    return rows


def report(stages: list[Stage], proj: list[tuple[str, str]], m: dict, args: argparse.Namespace) -> str:
    from ghanet_pipeline.env.runtime import cpu_info

    load = os.getloadavg()
    lines = [f"CPU: {cpu_info().model}, {os.cpu_count()} cores; load average at the end {load[0]:.2f}; "
             f"{m['n_cases']} cases, {m['n_slides']} slides, {args.patches:,} patches per bag",
             "", "| stage | wall s | peak RSS MB | note |", "|---|---|---|---|"]
    for s in stages:
        rss = "" if s.peak_rss_mb is None else f"{s.peak_rss_mb:,.0f}"
        lines.append(f"| {s.name} | {s.seconds:,.1f} | {rss} | {s.note} |")
    lines += ["", f"disk: {m['bag_bytes_mean'] / 1e6:.1f} MB per bag, {m['bags_bytes_total'] / 1e9:.2f} GB of bags, "
              f"{m['work_bytes_total'] / 1e9:.2f} GB under {args.work} in all", "",
              f"projection: {args.project_slides} slides x {args.patches:,} patches, {args.project_folds} folds x "
              f"{args.project_epochs} epochs", "", "| what | projected |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in proj]
    return "\n".join(lines)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", required=True, type=Path, help="MCAT-format table (.csv or .csv.zip)")
    ap.add_argument("--families", required=True, help="gene families CSV (MCAT's signatures.csv)")
    ap.add_argument("--splits", default=None, help="folder of MCAT splits_<k>.csv (full table only)")
    ap.add_argument("--work", required=True, type=Path, help="scratch folder (created; keep it off the repo)")
    ap.add_argument("--cases", type=int, default=None, help="use this many cases (default: every case)")
    ap.add_argument("--patches", type=int, default=10_000, help="patches per real-size bag")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cache-gb", default="4", help="train --cache-gb of the main run")
    ap.add_argument("--slide-px", type=int, default=1024, help="side of the synthetic slide files")
    ap.add_argument("--probe-cases", type=int, default=40)
    ap.add_argument("--predict-cases", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes writing the slide files")
    ap.add_argument("--gpu-log", type=Path, default=None, help="saved output of bash benchmarks/gpu_check.sh")
    ap.add_argument("--project-slides", type=int, default=437)
    ap.add_argument("--project-epochs", type=int, default=20)
    ap.add_argument("--project-folds", type=int, default=5)
    ap.add_argument("--no-disk-check", action="store_true")
    args = ap.parse_args()
    run_rehearsal(args)


def run_rehearsal(args: argparse.Namespace) -> None:
    from ghanet_pipeline.core.slideids import slide_id_from_name
    from ghanet_pipeline.demo.gdcdownload import pick_cases, read_mcat_rows, write_subtable

    work, out = args.work.resolve(), "ghanet-out"
    work.mkdir(parents=True, exist_ok=True)
    rows = pick_cases(read_mcat_rows(args.table), args.cases, seed=0)
    sids = [slide_id_from_name(s) for s in rows["slide_id"]]
    need = disk_needed(len(sids), args.patches)
    free = shutil.disk_usage(work).free
    print(f"{rows['case_id'].nunique()} cases, {len(sids)} slides; real-size bags need {need / 1e9:.1f} GB, "
          f"{free / 1e9:.1f} GB free under {work}", flush=True)
    if need * 1.1 + 2e9 > free and not args.no_disk_check:
        raise SystemExit(f"not enough free disk under {work}: need {need / 1e9:.1f} GB (+10 % and 2 GB spare)")
    table = args.table.resolve() if args.cases is None else write_subtable(rows, work / args.table.name)
    families = str(Path(args.families).resolve())
    stages = [layout(rows, work, args.slide_px, args.jobs),
              write_real_size_bags(sids, work / out / "features" / BAG_DIR, args.patches)]
    dl = ["gdc-download", "--recursive", "--slide-types", "DX", "--out", out, "--no-progress"]
    stages.append(run("segment", ["segment", *dl], work))
    stages.append(run("extract-features (small slides)", ["extract-features", *dl, "--weights", "random",
                                                          "--device", "cpu"], work))
    st_rate, rate = extract_rate(work, out)
    # a subset (--cases) has too few deaths per fold for differential selection: keep every gene there
    splits = (["--splits", str(Path(args.splits).resolve())] if args.splits and args.cases is None
              else ["--folds", str(args.folds)] + (["--de-method", "none"] if args.cases is not None else []))
    stages += [st_rate, run("preprocess-genomics", ["preprocess-genomics", "--table", str(table), "--families", families,
                                                    *splits, "--out", out, "--no-progress"], work)]
    st = run("train", ["train", "--features", f"{out}/features/{BAG_DIR}", "--genomics", f"{out}/genomics", "--out", out,
                       "--epochs", str(args.epochs), "--cache-gb", str(args.cache_gb), "--no-progress"], work)
    secs = epoch_seconds(work / out / "train" / "ghanet")
    st.note = f"{len(secs)} fold-epochs, {np.mean(secs):.1f} s each (mean), --cache-gb {args.cache_gb}"
    stages.append(st)
    stages += probe(rows, work, out, families, min(args.probe_cases, rows["case_id"].nunique()))
    pred = rows.drop_duplicates("case_id").head(args.predict_cases)
    man = work / "predict.csv"
    man.write_text("slide_id,path,case_id\n" + "".join(f"{slide_id_from_name(r.slide_id)},x.svs,{r.case_id}\n"
                                                       for r in rows[rows["case_id"].isin(pred["case_id"])].itertuples()))
    st = run("predict", ["predict", "--manifest", man.name, "--features", f"{out}/features/{BAG_DIR}", "--model",
                         f"{out}/train/ghanet", "--out", out, "--no-progress", "--overwrite"], work)
    st.note = f"{len(pred)} cases from their bags, {st.seconds / len(pred):.2f} s per case"
    stages.append(st)
    bags = list((work / out / "features" / BAG_DIR).glob("*.h5"))
    seg = next(s for s in stages if s.name == "segment")
    m = {"n_cases": int(rows["case_id"].nunique()), "n_slides": len(sids), "extract_rate": rate,
         "gpu_rate": gpu_rate(args.gpu_log), "bag_bytes_mean": float(np.mean([b.stat().st_size for b in bags])),
         "bags_bytes_total": sum(b.stat().st_size for b in bags), "work_bytes_total": folder_bytes(work),
         "train_s_per_slide_epoch": float(np.sum(secs)) / (len(secs) * len(sids)),
         "segment_s_per_slide": seg.seconds / len(sids)}
    proj = projection(m, args)
    text = report(stages, proj, m, args)
    print(text)
    (work / "rehearsal.json").write_text(json.dumps({"stages": [asdict(s) for s in stages], "measured": m,
                                                     "projection": proj, "args": {k: str(v) for k, v in vars(args).items()}},
                                                    indent=2))
    (work / "rehearsal.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
