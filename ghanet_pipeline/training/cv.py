"""K-fold training of G-HANet (or the ABMIL baseline) on case bags, with resumable per-epoch state.

``train_cv(features_dir, genomics_dir, out, config)`` runs the folds written by ``preprocess-genomics``
and writes ``<out>/train/<run>/``:

```
config.json                 effective configuration (+ versions, inputs)
fold_<k>/model.safetensors  weights of the reported epoch   } models.save_checkpoint
fold_<k>/model.json         checkpoint metadata             }
fold_<k>/history.json       per-epoch losses and validation c-index; "complete": true marks a finished fold
fold_<k>/predictions.csv    validation cases of this fold
fold_<k>/case_spearman.csv  (ghanet) per validation case and family: Spearman(reconstructed, true genes)
fold_<k>/gene_spearman.csv  (ghanet) per gene: Spearman across validation cases
fold_<k>/state/             per-epoch resume state (removed when the fold is complete)
predictions.csv, metrics.json, km.png, spearman.png, learning_curves.png
```

Protocol (paper + authors' code): Adam (lr 2e-4, weight decay 1e-5), one case per step, gradients
accumulated over ``accum`` cases (loss divided by ``accum``; the last partial group of an epoch is
applied too), cases drawn with replacement with weights balancing the 8 classes (bin x censorship),
``epochs`` epochs. Loss = NLL + alpha * sum over families with genes (MSE + SCE). The reported model is
the FINAL epoch (``select="final"``); ``select="best-epoch"`` picks the epoch with the best validation
c-index, as the authors did, and every output says that this is optimistic.

Rerunning a run: a fold whose ``history.json`` says complete is not retrained (other protocol options
are an error: ``--overwrite`` or another run name). With ``resume=True`` an interrupted fold restarts
after its last saved epoch with the same weights, optimiser moments and RNG state (bit-identical on
CPU); without it an interrupted fold starts again from epoch 1. Sampling and patch subsampling are
seeded per (seed, fold, epoch), so the "sampler position" is the epoch number. Nothing is pickled:
tensors go to safetensors, the rest to JSON.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.errors import BusyError, ConfigError, InputError
from ..core.files import atomic_path, remove_stale_temps, write_json_atomic
from ..core.fingerprints import fingerprint_digest, to_json
from ..core.ids import safe_child, sanitize_id
from ..core.locks import OutputLocks
from ..core.runs import ItemResult, run_items, write_run_log
from ..env.device import resolve_device
from ..genomics import FoldData, list_folds, load_fold
from .config import ProgressFn, TrainConfig, TrainResult, config_hash, noop_progress
from .data import CaseBags, training_cases
from .fingerprint import training_fingerprint
from .loop import train_fold
from .provenance_check import check_run_folder
from .state import FoldOutcome, fold_complete, load_finished_fold

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# the whole cross-validation
# --------------------------------------------------------------------------------------------------

def _spearman_summary(frames: Sequence[Any], key: str) -> dict[str, dict[str, Any]]:
    import pandas as pd

    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return {}
    df = pd.concat(frames, ignore_index=True)
    out: dict[str, dict[str, Any]] = {}
    for fam, sub in df.groupby("family", sort=False):
        vals = sub["spearman"].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        out[str(fam)] = {"mean": float(vals.mean()) if len(vals) else None,
                         "std": float(vals.std()) if len(vals) else None, "n": int(len(vals)),
                         "per": key}
    return out


@dataclass
class TrainInputs:
    """Everything a run is made from, read and checked before anything is written."""

    all_folds: list[int]
    folds: list[int]
    fold_data: dict[int, FoldData]
    bags: CaseBags
    case_paths: dict[str, list[Path]]
    genomics_protocol: str | None
    mapping: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunContext:
    """One ``train_cv`` call at work in its run folder."""

    run_dir: Path
    out: Path
    inputs: TrainInputs
    config: TrainConfig
    c_hash: str
    fp_digest: str
    resume: bool
    progress: ProgressFn
    locks: OutputLocks
    eff: dict[str, Any]
    started: float


def train_cv(features_dir: Path | str, genomics_dir: Path | str, out: Path | str,
             config: TrainConfig | None = None, run_name: str | None = None, manifest: Path | str | None = None,
             resume: bool = False, overwrite: bool = False, progress: ProgressFn = noop_progress) -> TrainResult:
    """Cross-validated training (see module docstring). ``out`` is the output root; the run is written to
    ``<out>/train/<run_name>`` (default run name: the model name). ``progress(kind, **info)`` is called with
    kind "fold_start", "resume", "epoch", "fold_done"."""
    started = time.time()
    config = config or TrainConfig()
    config.validate()
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    out = Path(out)
    run = sanitize_id(run_name or config.model, "run name")
    run_dir = safe_child(out, "train", run)
    _resolve_precision(config)  # also: a bad --device is a usage error, not a failure of every fold
    inputs = read_train_inputs(Path(features_dir), Path(genomics_dir), config, manifest)
    fp = training_fingerprint(config, inputs.fold_data, inputs.case_paths, inputs.bags.encoder, inputs.mapping,
                              inputs.bags.recorded_sha)
    fp_digest = fingerprint_digest(fp)
    c_hash = config_hash(config)
    eff = _effective_config(Path(features_dir), Path(genomics_dir), manifest, run, config, inputs, c_hash,
                            fp_digest, to_json(fp))
    locks = OutputLocks(out / "train", run)
    _claim_run_dir(locks, run_dir, eff, fp, resume, overwrite, inputs.folds)
    try:
        return _train_folds(RunContext(run_dir, out, inputs, config, c_hash, fp_digest, resume, progress, locks,
                                       eff, started))
    finally:
        locks.release_job()


def _resolve_precision(config: TrainConfig) -> None:
    """Replace ``config.precision`` ("auto" too) by what the folds run, fp32 or bf16, and log why; bf16 on a CPU
    without bf16 instructions is warned about (emulated: several times slower)."""
    from ..env.runtime import bf16_cpu_warning, resolve_train_precision

    device = resolve_device(config.device)
    config.precision, why = resolve_train_precision(config.precision, device)
    log.info("train: precision %s (%s)", config.precision, why)
    if config.precision == "bf16" and device.type == "cpu" and (warning := bf16_cpu_warning()):
        log.warning("%s", warning.replace("--precision fp32 (or auto)", "train --precision fp32 (or auto)"))


def _select_folds(genomics_dir: Path, config: TrainConfig) -> tuple[list[int], list[int]]:
    """(every fold of the genomics folder, the folds to train: ``config.folds`` or all)."""
    all_folds = list_folds(genomics_dir)
    if not all_folds:
        raise InputError(f"{genomics_dir} holds no folds (fold_<k>/targets.h5); run `ghanet preprocess-genomics` "
                         f"first and pass its output folder (<out>/genomics) as --genomics")
    folds = list(config.folds) if config.folds else all_folds
    unknown = [k for k in folds if k not in all_folds]
    if unknown:
        raise ConfigError(f"--folds {unknown} not in {genomics_dir} (it has folds {all_folds})")
    return all_folds, folds


def read_train_inputs(features_dir: Path, genomics_dir: Path, config: TrainConfig,
                      manifest: Path | str | None) -> TrainInputs:
    """The folds, the case -> bag mapping (``data.training_cases``) and the bags; warnings for what is skipped."""
    all_folds, folds = _select_folds(genomics_dir, config)
    fold_data = {k: load_fold(genomics_dir, k) for k in all_folds}
    genomics_protocol = _genomics_protocol(genomics_dir)
    all_cases = list(dict.fromkeys(c for fd in fold_data.values() for c in list(fd.train_ids) + list(fd.val_ids)))
    mapped, warnings = training_cases(genomics_dir, features_dir, all_cases, manifest, config.case_id_from,
                                      config.slide_types)
    if genomics_protocol not in (None, config.protocol):
        msg = (f"the genomics folder was made with --protocol {genomics_protocol} but training uses "
               f"--protocol {config.protocol}: bins and gene selection follow the genomics protocol")
        warnings.append(msg)
        log.warning("%s", msg)
    bags = CaseBags(mapped.found, cache_gb=config.cache_gb, allow_mixed_precision=config.allow_mixed_precision)
    warnings.extend(bags.warnings)
    return TrainInputs(all_folds, folds, fold_data, bags, mapped.found, genomics_protocol, mapped.source, warnings)


def _effective_config(features_dir: Path, genomics_dir: Path, manifest: Path | str | None, run: str,
                      config: TrainConfig, inputs: TrainInputs, c_hash: str, fp_digest: str,
                      fp_json: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` of the run: options, inputs, versions and the inputs' fingerprint."""
    import torch

    return {"features": str(features_dir.resolve()), "genomics": str(genomics_dir.resolve()),
            "manifest": str(Path(manifest).resolve()) if manifest else None, "run_name": run,
            **asdict(config), "folds": inputs.folds, "ghanet_version": __version__, "torch": torch.__version__,
            "config_hash": c_hash, "encoder": inputs.bags.encoder, "n_cases_with_bags": len(inputs.bags.cases()),
            "genomics_protocol": inputs.genomics_protocol, "fingerprint_digest": fp_digest, "fingerprint": fp_json}


def _claim_run_dir(locks: OutputLocks, run_dir: Path, eff: dict[str, Any], fp: Any, resume: bool, overwrite: bool,
                   folds: list[int]) -> None:
    """Check the run folder against this run's inputs and options, then claim it: nothing is written
    before this point; a changed input is refused, ``--overwrite`` while other jobs work in it too."""
    cfg_path = run_dir / "config.json"
    with locks.exclusive():
        if run_dir.exists() and any(run_dir.iterdir()):
            if overwrite:
                busy = locks.busy_jobs()
                if busy:
                    raise BusyError(f"{run_dir} is in use by {len(busy)} other train process(es) "
                                    f"({', '.join(busy)}), e.g. another fold job of this run; --overwrite would "
                                    f"delete their files. Wait for them to finish, stop them, or use another "
                                    f"--run-name")
                shutil.rmtree(run_dir)
            else:
                check_run_folder(run_dir, fp, eff["fingerprint_digest"], eff["config_hash"], folds if resume else [])
                if cfg_path.is_file():  # same inputs: the run's folds are the union over its commands
                    old_folds = json.loads(cfg_path.read_text()).get("folds") or []
                    eff["folds"] = sorted(set(old_folds) | set(folds))
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)  # a killed run's half-written reports (never a live writer's)
        write_json_atomic(cfg_path, eff)
        locks.register_job()


def _train_one_fold(ctx: RunContext, k: int) -> tuple[FoldOutcome, str]:
    """Fold ``k`` and its status: ``skipped`` (finished before, reused) or ``done`` (trained now); the
    fold's lock is held meanwhile."""
    fold_dir = ctx.run_dir / f"fold_{k}"
    with ctx.locks.item(f"fold_{k}"):  # another job training this fold: wait, then find it finished
        for d in (fold_dir, fold_dir / "state"):
            remove_stale_temps(d)   # a killed run's half-written files (never a live writer's)
        if fold_complete(fold_dir):  # finished from the same inputs and options (checked above)
            return load_finished_fold(fold_dir, k), "skipped"
        if not ctx.resume and fold_dir.exists():
            if (fold_dir / "state").is_dir():
                log.warning("fold %d: an interrupted training is restarted from epoch 1 (pass --resume "
                            "to continue it from its last saved epoch)", k)
            shutil.rmtree(fold_dir)
        ctx.progress("fold_start", fold=k, epochs=ctx.config.epochs)
        bags = ctx.inputs.bags
        return train_fold(k, ctx.inputs.fold_data[k], bags, ctx.config, fold_dir, bags.encoder, ctx.progress,
                          ctx.c_hash, ctx.fp_digest), "done"


def _train_folds(ctx: RunContext) -> TrainResult:
    outcomes: dict[int, FoldOutcome] = {}

    def work(k: int) -> ItemResult:
        oc, status = _train_one_fold(ctx, k)
        outcomes[k] = oc
        sel = next((h for h in oc.history if h["epoch"] == oc.selected_epoch), {})
        res = ItemResult(item=f"fold {k}", status=status, metrics={
            "val_c_index": sel.get("val_c_index"), "epoch": oc.selected_epoch,
            "n_val": len(oc.predictions), "skipped_cases": len(oc.skipped_cases)})
        ctx.progress("fold_done", fold=k, result=res)
        return res

    results = run_items(ctx.inputs.folds, lambda k: f"fold {k}", work)
    metrics = None
    with ctx.locks.exclusive():  # one job at a time merges the reports, from every finished fold on disk
        # folds finished earlier in this run directory (same inputs, e.g. one cluster job per --folds k)
        # belong to the reports too
        for k in ctx.inputs.all_folds:
            if k not in outcomes and fold_complete(ctx.run_dir / f"fold_{k}"):
                outcomes[k] = load_finished_fold(ctx.run_dir / f"fold_{k}", k)
        if outcomes:
            metrics = _write_run_reports(ctx.run_dir, outcomes, ctx.config, ctx.inputs.warnings)
    write_run_log(ctx.out, "train", ctx.eff, results, started=ctx.started)
    return TrainResult(run_dir=ctx.run_dir, folds=results, metrics=metrics, warnings=ctx.inputs.warnings)


def _write_run_reports(run_dir: Path, outcomes: Mapping[int, FoldOutcome], config: TrainConfig,
                       warnings: list[str]) -> dict[str, Any]:
    import pandas as pd

    from ..evaluation.evaluate import evaluate_predictions
    from ..evaluation.metrics import NoComparablePairsError
    from ..evaluation.plots import OPTIMISTIC_NOTE, plot_gene_reconstruction, plot_learning_curves

    ks = sorted(outcomes)
    pred = pd.concat([outcomes[k].predictions for k in ks], ignore_index=True)
    with atomic_path(run_dir / "predictions.csv") as tmp:
        pred.to_csv(tmp, index=False)
    optimistic = config.select == "best-epoch"
    case_sp = _spearman_summary([outcomes[k].case_spearman for k in ks], "case")
    gene_sp = _spearman_summary([outcomes[k].gene_spearman for k in ks], "gene")
    extra: dict[str, Any] = {
        "model": config.model, "select": config.select, "protocol": config.protocol, "preset": config.preset,
        "selected_epochs": {str(k): outcomes[k].selected_epoch for k in ks},
        "train_risk_median": {str(k): outcomes[k].train_risk_median for k in ks},
        "spearman_per_family": case_sp, "gene_spearman_per_family": gene_sp,
        "skipped_cases": sorted({c for k in ks for c in outcomes[k].skipped_cases}),
    }
    title = f"{config.model}: Kaplan-Meier of validation cases by predicted risk"
    try:
        metrics = evaluate_predictions(pred, run_dir, thresholds={str(k): outcomes[k].train_risk_median for k in ks},
                                       optimistic=optimistic, extra=extra, title=title)
    except NoComparablePairsError as exc:  # no fold has an event pair: keep predictions and curves anyway
        log.warning("%s", exc)
        metrics = {"c_index_per_fold": {str(k): None for k in ks}, "c_index_mean": None, "c_index_std": None,
                   "c_index_pooled": None, "logrank_p": None, "n_cases": int(len(pred)),
                   "optimistic": optimistic, "warnings": [str(exc)], **extra}
    metrics["warnings"] = warnings + metrics.get("warnings", [])
    note = OPTIMISTIC_NOTE if optimistic else ""
    plot_learning_curves({k: outcomes[k].history for k in ks}, run_dir / "learning_curves.png",
                         selected_epochs={k: outcomes[k].selected_epoch for k in ks}, note=note)
    metrics.setdefault("plots", {})["learning_curves"] = "learning_curves.png"
    frames = [outcomes[k].case_spearman for k in ks if outcomes[k].case_spearman is not None]
    if frames:
        df = pd.concat(frames, ignore_index=True)
        per_case = {str(f): sub["spearman"].tolist() for f, sub in df.groupby("family", sort=False)}
        genes = pd.concat([outcomes[k].gene_spearman for k in ks if outcomes[k].gene_spearman is not None],
                          ignore_index=True)
        per_gene = {str(f): list(zip(sub["gene"].astype(str), sub["spearman"].astype(float), strict=True))
                    for f, sub in genes.groupby("family", sort=False)}
        plot_gene_reconstruction(per_gene, per_case, run_dir / "spearman.png", note=note)
        metrics["plots"]["spearman"] = "spearman.png"
    write_json_atomic(run_dir / "metrics.json", _nan_to_none(metrics))
    return metrics


def _genomics_protocol(genomics_dir: Path) -> str | None:
    """``protocol`` recorded in the genomics config.json (``ghanet`` for folders made before it existed)."""
    try:
        doc = json.loads((genomics_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return str(doc.get("protocol") or doc.get("config", {}).get("protocol") or "ghanet")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
