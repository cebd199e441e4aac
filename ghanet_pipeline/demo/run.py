"""The synthetic end-to-end demo behind ``make demo`` / ``ghanet demo``.

It builds a small cohort with a known answer and then runs the *same commands a user types*, one
``ghanet`` subprocess per stage, each writing under one output root:

1. cohort (library): :func:`demo.cohort.make_cohort` gives clinical data, an MCAT-style
   genomics table and gene families driven by a hidden per-case ``phenotype``; one synthetic slide
   per row is written with :func:`synthetic.write_synthetic_slide` using that case's phenotype (the
   share of dense dark-nuclei tissue), so the slides carry the survival signal. A few extra
   patients (new case ids, same generative process) are kept apart as held-out slides.
2. ``ghanet segment`` -> ``ghanet calibrate-encoder --weights random`` (BatchNorm statistics and a
   per-channel standardisation re-estimated on patches of the cohort, saved as a weights file: no
   download) -> ``ghanet extract-features --weights <that file>`` -> ``ghanet preprocess-genomics``
   -> ``ghanet train`` (k folds, G-HANet, then ABMIL for comparison) -> ``ghanet predict`` on the
   held-out slides with heatmaps (PNG + QuPath GeoJSON) -> ``ghanet report`` (``<out>/report/index.html``:
   results and a deep-zoom page per held-out slide; train and predict run with ``--no-report``).

Then it reads back what a new user should see (``demo/report.py``): the mean pairwise cosine of
the bags' patch features, the span of the held-out risks and their rank correlation with the hidden
phenotype, and the reconstruction of the planted genes (marked in the run's ``spearman.png``).

Every stage skips finished outputs, so a second run of the demo into the same folder only redoes what
is missing.

This module never prints: :func:`run_demo` returns a :class:`DemoResult` that the CLI renders; the
stages' own output goes to the ``stream`` given (the terminal by default).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..core.errors import GhanetError
from . import report
from .config import DemoConfig
from .limits import check_config


@dataclass
class StageRun:
    """One stage of the demo: its command line, exit code and wall time (seconds)."""

    stage: str
    command: list[str]
    returncode: int | None
    seconds: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class DemoResult:
    """What the demo did and where its results are.

    ``cindex``: one row per model run: ``model``, ``run_dir``, ``c_index_mean``, ``c_index_std``,
    ``c_index_per_fold`` ({fold: value}), ``c_index_pooled``, ``logrank_p`` (whatever the run's
    metrics.json holds). ``risks``: one row per held-out case: ``case_id``, ``risk``, ``risk_group``,
    ``phenotype`` (the hidden truth; higher = worse) and, when present, ``survival_months``,
    ``censorship``.
    """

    out: Path
    data_dir: Path
    stages: list[StageRun] = field(default_factory=list)
    cindex: list[dict[str, Any]] = field(default_factory=list)
    risks: list[dict[str, Any]] = field(default_factory=list)
    km_plots: list[Path] = field(default_factory=list)
    heatmaps: list[Path] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    #: mean pairwise cosine similarity between patch features of the bags (sample of 2000 patches)
    feature_cosine: float | None = None
    #: held-out risks: ``span`` (max - min) and ``spearman`` with the hidden phenotype
    risk_summary: dict[str, float | None] = field(default_factory=dict)
    #: planted genes: ``planted_mean`` / ``other_mean`` per-gene Spearman across validation cases
    genes: dict[str, Any] = field(default_factory=dict)
    planted_genes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stages)


# --------------------------------------------------------------------------------------------------
# cohort
# --------------------------------------------------------------------------------------------------

def _slide_seed(base_seed: int, index: int) -> int:
    return int(base_seed) * 100_003 + 17 * index + 1


def _write_manifest(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    from ..core.files import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _write_slides(clinical_rows: list[dict[str, Any]], slide_dir: Path, slide_px: int, seed: int,
                  offset: int = 0, rewrite: bool = False) -> list[dict[str, Any]]:
    """One synthetic slide per clinical row (kept when the file exists, unless ``rewrite``); returns
    manifest rows."""
    from ..wsi.synthetic import write_synthetic_slide

    rows = []
    for i, r in enumerate(clinical_rows):
        path = slide_dir / f"{r['slide_id']}.tif"
        slide_seed = _slide_seed(seed, offset + i)
        if rewrite or not path.is_file():
            write_synthetic_slide(path, slide_px, slide_px, mpp=0.5, phenotype=float(r["phenotype"]), seed=slide_seed)
        rows.append({"slide_id": r["slide_id"], "path": f"slides/{path.name}", "case_id": r["case_id"],
                     "phenotype": r["phenotype"], "survival_months": r["survival_months"],
                     "censorship": r["censorship"], "slide_seed": slide_seed})
    return rows


def build_cohort(data_dir: Path | str, config: DemoConfig) -> dict[str, Path]:
    """Write the demo's inputs under ``data_dir`` and return their paths.

    Keys: ``manifest`` (training slides: slide_id, path, case_id, phenotype, survival, slide_seed), ``table``
    (MCAT-style genomics, one row per slide), ``families``, ``clinical``, ``counts``,
    ``holdout_manifest`` (new patients' slides, same columns; their genomics are not written: at
    inference a slide alone is enough).
    """
    from ..core.files import write_json_atomic
    from .cohort import make_cohort, write_cohort_tables

    data_dir = Path(data_dir)
    cohort = make_cohort(n_cases=config.n_cases, seed=config.seed)
    # plain CSV (a .zip embeds a timestamp) and written only when the cohort changed: the stages
    # fingerprint their input files, so identical inputs let a rerun reuse every finished output
    stamp = data_dir / "cohort.json"
    params = {"n_cases": config.n_cases, "seed": config.seed, "slide_px": config.slide_px,
              "n_holdout": config.n_holdout, "cohort": cohort.params,
              # the genes whose expression the hidden phenotype drives (the rest is noise)
              "planted_genes": sorted(cohort.planted_genes), "planted_by_family": cohort.planted}
    names = {"table": "genomics_table.csv", "counts": "counts.csv", "clinical": "clinical.csv",
             "families": "families.csv"}
    paths = {k: data_dir / v for k, v in names.items()}
    same = (stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(params))
            and all(p.is_file() for p in paths.values()))
    if not same:
        paths = write_cohort_tables(cohort, data_dir, table_name=names["table"])
    train_rows = _write_slides(cohort.clinical.to_dict("records"), data_dir / "slides", config.slide_px,
                               config.seed, rewrite=not same)
    # phenotype and slide_seed are the hidden truth (wsi.synthetic.tissue_fields(..., phenotype, seed))
    columns = ["slide_id", "path", "case_id", "phenotype", "survival_months", "censorship", "slide_seed"]
    paths["manifest"] = data_dir / "manifest.csv"
    _write_manifest(paths["manifest"], train_rows, columns)
    if config.n_holdout > 0:
        new = make_cohort(n_cases=max(4, config.n_holdout), seed=config.seed + 1, case_prefix="NEW",
                          second_slide_fraction=0.0)
        new_rows = new.clinical.head(config.n_holdout).to_dict("records")
        hold_rows = _write_slides(new_rows, data_dir / "slides", config.slide_px, config.seed,
                                  offset=len(train_rows) + 1000, rewrite=not same)
        paths["holdout_manifest"] = data_dir / "holdout_manifest.csv"
        _write_manifest(paths["holdout_manifest"], hold_rows, columns)
    if not same:
        write_json_atomic(stamp, params)
    paths["workflow_config"] = write_workflow_config(data_dir, paths, config)
    return paths


def write_workflow_config(data_dir: Path, paths: dict[str, Path], config: DemoConfig) -> Path:
    """A Snakemake config for the same synthetic cohort (``<data_dir>/workflow.yaml``), so that
    ``snakemake -s pipelines/Snakefile --configfile <it> --cores 2`` runs it through the workflow;
    outputs go to ``<data_dir>/../workflow-out`` (apart from the demo's own outputs)."""
    import yaml

    from ..core.files import write_text_atomic

    data_dir = Path(data_dir).resolve()
    cfg: dict[str, Any] = {
        "out": str(data_dir.parent / "workflow-out"),
        "manifest": str(paths["manifest"].resolve()),
        "genomics_table": str(paths["table"].resolve()),
        "families": str(paths["families"].resolve()),
        "folds": int(config.folds),
        "extract": {"weights": config.weights, "device": config.device, "num_workers": 0, "gpu": 0, "threads": 2},
        "train": {"run_name": "ghanet", "model": "ghanet", "epochs": int(config.epochs), "device": config.device,
                  "threads": 1, "extra": " ".join(config.train_args)},
        "predict": {"device": config.device},
    }
    if "holdout_manifest" in paths:
        cfg["predict_manifest"] = str(paths["holdout_manifest"].resolve())
    return write_text_atomic(data_dir / "workflow.yaml",
                             "# Snakemake config for the demo cohort (written by `ghanet demo`):\n"
                             "#   snakemake -s pipelines/Snakefile --configfile " + str(data_dir / "workflow.yaml")
                             + " --cores 2\n" + yaml.safe_dump(cfg, sort_keys=False))


# --------------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------------

def _ghanet(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ghanet_pipeline", *[str(a) for a in args]]


def _run(stage: str, cmd: list[str], stream: IO[str] | None, env: dict[str, str]) -> StageRun:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=stream, stderr=subprocess.STDOUT if stream is not None else None,
                          env=env, check=False)
    return StageRun(stage=stage, command=cmd, returncode=proc.returncode,
                    seconds=round(time.perf_counter() - t0, 1))


def _features_dir(out: Path) -> Path | None:
    """The ``<out>/features/<encoder_tag>/`` folder holding bags (the last by name when there are
    several; None when there is none)."""
    root = out / "features"
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("*.h5"))) if root.is_dir() else []
    return dirs[-1] if dirs else None


class _DemoRun:
    """The demo's stages as ``ghanet`` subprocesses into one output root; each returns False to stop."""

    def __init__(self, out: Path, config: DemoConfig, stream: IO[str] | None,
                 on_stage: Callable[[str, list[str]], None] | None) -> None:
        self.out, self.config, self.stream, self.on_stage = out, config, stream, on_stage
        self.result = DemoResult(out=out, data_dir=out / "demo-data")
        self.env = dict(os.environ)
        self.env.setdefault("MALLOC_MMAP_MAX_", "0")  # see docs/benchmarks.md: faster CPU inference
        self.env.setdefault("MALLOC_TRIM_THRESHOLD_", str(16 * 2**30))
        # training steps on bags of ~30 patches are tiny: one intra-op thread avoids OpenMP spin-waits
        self.env_train = {**self.env, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.redo = ["--overwrite"] if config.overwrite else []
        self.common: list[str | Path] = ["--out", out, "--no-progress", *self.redo]
        self.paths: dict[str, Path] = {}
        self.weights = config.weights
        self.run_dirs: dict[str, Path] = {}

    def stage(self, name: str, cmd: list[str]) -> bool:
        if self.on_stage is not None:
            self.on_stage(name, cmd)
        run = _run(name, cmd, self.stream, self.env_train if name.startswith("train") else self.env)
        self.result.stages.append(run)
        return run.ok

    def cohort(self) -> bool:
        t0 = time.perf_counter()
        if self.on_stage is not None:
            self.on_stage("cohort", ["(library) demo.cohort.make_cohort + wsi.synthetic.write_synthetic_slide"])
        res = self.result
        self.paths = build_cohort(res.data_dir, self.config)
        res.stages.append(StageRun("cohort", [], 0, round(time.perf_counter() - t0, 1),
                                   note=f"{self.config.n_cases} cases, slides in {res.data_dir / 'slides'}"))
        res.outputs.update({f"input:{k}": v for k, v in self.paths.items()})
        res.planted_genes = list(json.loads((res.data_dir / "cohort.json").read_text()).get("planted_genes", []))
        return True

    def segment(self) -> bool:
        """Training slides only: ``ghanet predict`` segments the held-out slides itself."""
        ok = self.stage("segment", _ghanet("segment", "--manifest", self.paths["manifest"], *self.common))
        self.result.outputs["segment"] = self.out / "segment"
        return ok

    def calibrate(self) -> bool:
        """Random weights made usable on patches of the training slides (a recorded weights file)."""
        from ..features.calibrate import default_output

        cfg = self.config
        if not str(cfg.weights).startswith("random"):
            return True
        self.weights = str(default_output(self.out, "resnet50_trunc", cfg.weights))
        self.result.outputs["encoder weights"] = Path(self.weights)
        return self.stage("calibrate-encoder", _ghanet(
            "calibrate-encoder", "--manifest", self.paths["manifest"], "--out", self.out, "--weights", cfg.weights,
            "--patches", cfg.calibration_patches, "--output", self.weights, *self.redo))

    def extract(self) -> bool:
        cfg = self.config
        workers = [] if cfg.num_workers is None else ["--num-workers", cfg.num_workers]
        if not self.stage("extract-features", _ghanet("extract-features", "--manifest", self.paths["manifest"],
                                                      *self.common, "--weights", self.weights, "--device",
                                                      cfg.device, *workers)):
            return False
        features = _features_dir(self.out)
        if features is None:
            raise GhanetError(f"extract-features finished but wrote no bags under {self.out / 'features'}")
        self.result.outputs["features"] = features
        self.result.feature_cosine = report.bag_cosine(features)
        return True

    def genomics(self) -> bool:
        self.result.outputs["genomics"] = self.out / "genomics"
        return self.stage("preprocess-genomics", _ghanet(
            "preprocess-genomics", "--table", self.paths["table"], "--families", self.paths["families"],
            "--folds", self.config.folds, "--out", self.out, *self.redo))

    def train(self) -> bool:
        """G-HANet, then the ABMIL baseline under the same protocol; only the first model must succeed."""
        cfg, res = self.config, self.result
        for model in cfg.models:
            run_dir = self.out / "train" / model
            if not self.stage(f"train {model}", _ghanet(
                    "train", "--features", res.outputs["features"], "--genomics", self.out / "genomics", "--model",
                    model, "--run-name", model, "--epochs", cfg.epochs, *cfg.train_args, "--device", cfg.device,
                    *self.common, "--no-report", *([] if cfg.overwrite else ["--resume"]))):
                if model == cfg.models[0]:
                    return False
                continue
            self.run_dirs[model] = run_dir
            row = report.collect_metrics(run_dir, model)
            if row is not None:
                res.cindex.append(row)
            if (run_dir / "km.png").is_file():
                res.km_plots.append(run_dir / "km.png")
            if model == "ghanet":
                res.genes = report.planted_summary(run_dir, res.planted_genes)
                report.mark_planted(run_dir, res.planted_genes)
        return True

    def predict(self) -> bool:
        """The held-out slides, scored by the first model (G-HANet) from the slides alone."""
        cfg, res = self.config, self.result
        if cfg.models[0] not in self.run_dirs or "holdout_manifest" not in self.paths:
            return True
        cmd = _ghanet("predict", "--manifest", self.paths["holdout_manifest"], "--model", self.run_dirs[cfg.models[0]],
                      "--weights", self.weights, "--device", cfg.device, "--no-report", *self.common)
        if not self.stage("predict", cmd + (["--heatmaps"] if cfg.heatmaps else [])):
            return False
        pred_dir = self.out / "predict"
        res.outputs["predict"] = pred_dir
        if (pred_dir / "predictions.csv").is_file():
            res.risks = report.collect_predictions(pred_dir / "predictions.csv", self.paths["holdout_manifest"])
            res.risk_summary = report.risk_summary(res.risks)
        res.heatmaps = sorted(pred_dir.rglob("*.png"))
        return True

    def report(self) -> bool:
        """The run report (``ghanet report``): results and a deep-zoom page per held-out slide."""
        if "predict" not in self.result.outputs:
            return True
        ok = self.stage("report", _ghanet("report", self.out, "--manifest", self.paths["holdout_manifest"],
                                          "--no-progress"))
        if ok:
            self.result.outputs["report"] = self.out / "report" / "index.html"
        return ok


def run_demo(out: Path | str, config: DemoConfig | None = None, stream: IO[str] | None = None,
             on_stage: Callable[[str, list[str]], None] | None = None) -> DemoResult:
    """Build the synthetic cohort under ``<out>/demo-data`` and run every stage into ``out``.

    ``stream``: where the stages' own output goes (None = inherit the terminal). ``on_stage(stage,
    command)`` is called before each stage (the CLI prints the command). A failing stage stops the
    stages that need its outputs; the result records it (``DemoResult.ok`` is False). Sizes at which a
    stage would fail raise :class:`OptionValueError` (:func:`check_config`) before anything is written.
    """
    config = config or DemoConfig()
    check_config(config)  # before anything is written
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = _DemoRun(out, config, stream, on_stage)
    for step in (run.cohort, run.segment, run.calibrate, run.extract, run.genomics, run.train, run.predict,
                 run.report):
        if not step():
            break
    return _finish(run.result, t_start)


def _finish(result: DemoResult, t_start: float) -> DemoResult:
    result.seconds = round(time.perf_counter() - t_start, 1)
    return result
