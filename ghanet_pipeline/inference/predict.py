"""Slide-only inference: per case segment -> coords -> embed -> ensemble of the fold models.

The fold models of a training run (``<out>/train/<run>/fold_<k>/``) are loaded once and applied to
each case's bag (all of the case's slides concatenated, as in training). Segmentation and feature
extraction reuse the library stages with the settings recorded in the checkpoints (target um/px,
patch size, encoder, input size) and write their usual outputs (``<out>/segment``,
``<out>/features``), so a rerun reuses valid coords and bags.

Ensemble rules (pure functions below, tested on their own):

- risk: mean over the fold models of each model's risk (``-sum(S)``, higher = worse); the spread is
  reported as the sample standard deviation (ddof=1; ``None`` for a single model), min and max.
- risk group: each fold model k was trained with its own training cohort, whose median risk
  ``m_k`` is stored in its checkpoint (``train_risk_median``). The ensemble threshold is the mean
  of those medians, ``t = mean_k(m_k)``, and the case is **high** when the mean risk is strictly
  above it: ``mean_k(r_k) > mean_k(m_k)``. This is the same as asking whether the average of the
  per-model margins ``r_k - m_k`` is positive, i.e. each model's risk is centred on its own
  training median before averaging (models trained on different folds have differently placed
  risk scales). It is preferred to a majority vote of per-model groups because it uses how far
  each model is from its threshold (a vote is a step function of the margins and ties with an
  even number of folds); the number of folds voting high is still reported (``folds_high``).
- survival curve: ``S_j`` = probability of surviving past the end of time bin j. With the same bin
  edges in every fold it is the mean over the models of their ``S_j``. When the folds' edges
  differ (bins fitted per training fold), each model's curve (knots ``(e_0, 1), (e_{j+1}, S_j)``)
  is linearly interpolated at the mean edges before averaging (``bin_edges_differ`` is then true).
- heatmap scores: the mean over the models of ``w_mor`` and of each family's top-k masked
  association (each a distribution over the case's patches, so the mean still sums to 1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, InputError, MismatchError, SlideError
from ..core.files import remove_stale_temps, write_json_atomic
from ..core.ids import safe_child, sanitize_ids
from ..core.runs import ItemResult, run_items, write_run_log
from ..env.device import resolve_device
from ..wsi.inputs import SlideSpec, take_shard
from .config import PredictConfig
from .embed import Embedder, SlideBag, bag_path, read_existing_bag
from .ensemble import ensemble_survival, risk_group, summarize_risks
from .loading import Ensemble, EnsembleOutput, load_ensemble
from .records import (
    NO_EARLIER_RESULT,
    CasePrediction,
    PredictionRun,
    case_record,
    existing_rows,
    input_signature,
    model_fingerprint,
    model_identity,
    prediction_from_record,
    read_record,
    rebuild_predictions_csv,
    reuse_refusal,
)

log = logging.getLogger(__name__)


def group_cases(specs: Sequence[SlideSpec]) -> dict[str, list[SlideSpec]]:
    """Slides by case (first-seen order); several slides of a case are pooled into one bag."""
    cases: dict[str, list[SlideSpec]] = {}
    for s in specs:
        cases.setdefault(s.case_id, []).append(s)
    return cases


def specs_from_features_dir(features_dir: Path) -> list[SlideSpec]:
    """One spec per bag in ``features_dir`` (``*.h5``/``*.pt``; case = slide id); used when no slides are given."""
    from ..features.bags import find_bags
    from ..wsi.inputs import sanitise_specs

    found = find_bags(features_dir)
    if not found:
        raise InputError(f"--features {features_dir}: no .h5 or .pt bags inside")
    return sanitise_specs([SlideSpec(slide_id=sid, path=p, case_id=sid, raw_slide_id=sid) for sid, p in found.items()])


def _case_bags(case_id: str, specs: Sequence[SlideSpec], ens: Ensemble, config: PredictConfig,
               embedder: Embedder | None, pred: CasePrediction, seconds: dict[str, float]) -> list[SlideBag]:
    """The bags of a case's slides that have patches (records patches per slide, notes, how the encoder was
    checked). A slide that cannot be read fails the whole case: a score from part of the tissue is refused."""
    slide_bags: list[SlideBag] = []
    errors: list[str] = []
    checks: set[str] = set()
    for spec in specs:
        try:
            if config.features_dir is not None:
                t = time.perf_counter()
                sb, how = read_existing_bag(bag_path(config.features_dir, spec), ens, config, spec)
                seconds["extract"] += time.perf_counter() - t
                checks.add(how)
            else:
                sb = embedder.embed(spec, seconds)
                checks.add("checked")
        except MismatchError:
            raise
        except (SlideError, InputError, OSError, ValueError, RuntimeError) as exc:
            msg = str(exc) if isinstance(exc, (SlideError, InputError)) else f"{type(exc).__name__}: {exc}"
            errors.append(f"slide {spec.slide_id}: {msg}")
            continue
        if sb.note:
            pred.notes.append(sb.note)
        pred.patches_per_slide[spec.slide_id] = len(sb.features)
        if len(sb.features):
            slide_bags.append(sb)
    pred.encoder_check = ", ".join(sorted(checks))
    if errors and len(errors) == len(specs):
        raise SlideError(f"case {case_id}: none of its {len(specs)} slide(s) could be read - " + " | ".join(errors))
    if errors:
        raise SlideError(f"case {case_id}: {len(errors)} of its {len(specs)} slides could not be read, so no score "
                         f"(it would use only part of the tissue) - " + " | ".join(errors)
                         + " - fix the slide or remove it from the manifest")
    return slide_bags


def _score(pred: CasePrediction, out: EnsembleOutput, ens: Ensemble, n_patches: int) -> None:
    """Fill the case's risk, risk group and survival curve from the fold models' outputs."""
    rs = summarize_risks(out.risks)
    grp = risk_group(out.risks, out.medians)
    curve = ensemble_survival(out.S, out.edges)
    pred.risk, pred.risk_std, pred.risk_min, pred.risk_max = rs.mean, rs.std, rs.min, rs.max
    pred.risk_per_fold = {m.fold: float(r) for m, r in zip(ens.members, out.risks, strict=False)}
    pred.threshold, pred.risk_group, pred.folds_high, pred.n_folds = grp.threshold, grp.group, grp.folds_high, grp.n_folds
    pred.survival, pred.survival_std = curve.S, curve.S_std
    pred.bin_edges_months, pred.bin_edges_differ = curve.edges_months, curve.edges_differ
    pred.n_patches = int(n_patches)


def predict_case(case_id: str, specs: Sequence[SlideSpec], ens: Ensemble, config: PredictConfig,
                 embedder: Embedder | None, out_dir: Path) -> CasePrediction:
    """Predict one case (all its slides pooled). Raises on a failing slide (the caller records it)."""
    t0 = time.perf_counter()
    pred = CasePrediction(case_id=case_id, slide_ids=[s.slide_id for s in specs],
                          slide_paths={s.slide_id: str(Path(s.path).resolve()) for s in specs
                                       if Path(s.path).suffix.lower() not in (".h5", ".pt")})
    seconds = {"segment": 0.0, "extract": 0.0, "model": 0.0, "heatmaps": 0.0}
    slide_bags = _case_bags(case_id, specs, ens, config, embedder, pred, seconds)
    if not slide_bags:
        pred.status = "no tissue"
        pred.message = "no tissue patch in any slide of the case; no score" + (
            f" ({'; '.join(pred.notes)})" if pred.notes else "")
    else:
        dims = {sb.features.shape[1] for sb in slide_bags}
        if len(dims) > 1:
            raise MismatchError(f"case {case_id}: its bags have different feature sizes {sorted(dims)}")
        feats = np.concatenate([sb.features for sb in slide_bags])  # the case's slides pooled into one bag
        t = time.perf_counter()
        out = ens.forward(feats, want_maps=config.heatmaps)
        seconds["model"] = time.perf_counter() - t
        _score(pred, out, ens, len(feats))
        if config.heatmaps:
            t = time.perf_counter()
            try:
                _heatmaps(pred, slide_bags, out, ens, out_dir)
            except (SlideError, InputError, OSError, ValueError) as exc:  # the score stands; say what is missing
                pred.message = f"heatmaps failed: {exc}"
            seconds["heatmaps"] = time.perf_counter() - t
    pred.seconds = {**{k: round(v, 3) for k, v in seconds.items()}, "total": round(time.perf_counter() - t0, 3)}
    return pred


def _heatmaps(pred: CasePrediction, slide_bags: list[SlideBag], out: EnsembleOutput, ens: Ensemble,
              out_dir: Path) -> None:
    from .heatmaps import SlideScores, write_case_heatmaps

    if out.w_mor is None and out.assoc_masked is None:
        pred.notes.append(f"model {ens.model_name} has no attention outputs; no heatmaps")
        return
    scores, start = [], 0
    n = sum(len(sb.features) for sb in slide_bags)
    for sb in slide_bags:
        stop = start + len(sb.features)
        path = sb.spec.path if sb.spec.path.suffix.lower() not in (".h5", ".pt") else None
        if sb.coords is None:
            pred.notes.append(f"slide {sb.spec.slide_id}: its bag has no patch coordinates, no heatmaps")
            start = stop
            continue
        size0 = sb.attrs.get("patch_size_level0")
        scores.append(SlideScores(
            slide_id=sb.spec.slide_id, slide_path=path, coords=sb.coords,
            w_mor=None if out.w_mor is None else out.w_mor[start:stop],
            assoc_masked=None if out.assoc_masked is None else out.assoc_masked[:, start:stop],
            n_case=n, mpp_override=sb.spec.mpp, patch_size_level0=int(size0) if size0 else None))
        start = stop
    enc = ens.encoder
    families = ens.families or [f"family_{g + 1}" for g in range(0 if out.assoc_masked is None else out.assoc_masked.shape[0])]
    hm_dir = safe_child(out_dir, "heatmaps", pred.case_id)
    res = write_case_heatmaps(hm_dir, pred.case_id, scores, families, float(enc["target_mpp"]),
                              int(enc["patch_size"]), ens.topk, n_models=len(ens.members))
    pred.heatmaps = [str(p) for p in res.files]
    pred.notes += res.notes


class _CaseRun:
    """The cases of one ``predict_cases`` call: which are reused, which are predicted, and their records."""

    def __init__(self, specs: Sequence[SlideSpec], ens: Ensemble, config: PredictConfig, out_dir: Path) -> None:
        self.ens, self.config, self.out_dir = ens, config, out_dir
        all_cases = group_cases(specs)
        self.safe = sanitize_ids(list(all_cases), what="case_id")
        self.cases = dict(take_shard(list(all_cases.items()), config.shard))
        self.inputs = {raw: _inputs(slides, config) for raw, slides in self.cases.items()}
        self.model_fp = model_fingerprint(ens)
        self.todo: set[str] = set()
        self.by_id: dict[str, CasePrediction] = {}
        self.embedder: Embedder | None = None

    def record_path(self, raw: str) -> Path:
        return safe_child(self.out_dir, f"{self.safe[raw]}.json")

    def plan(self) -> None:
        """Reuse every earlier record made by this model from the same inputs; the rest is to do."""
        for raw, slides in self.cases.items():
            why = "--overwrite" if self.config.overwrite else reuse_refusal(
                read_record(self.record_path(raw)), self.ens, self.model_fp, [s.slide_id for s in slides],
                self.inputs[raw], self.config.heatmaps)
            if why is None:
                self.by_id[raw] = prediction_from_record(read_record(self.record_path(raw)) or {})
                self.by_id[raw].reused = True
                continue
            self.todo.add(raw)
            if why not in (NO_EARLIER_RESULT, "--overwrite"):
                log.info("predict: case %s is predicted again: its earlier result was %s", self.safe[raw], why)
        if self.by_id:
            log.info("predict: %d of %d case(s) reused from %s (same model and input files; --overwrite redoes "
                     "them)", len(self.by_id), len(self.cases), self.out_dir)
        if self.config.features_dir is None and self.todo:
            self.embedder = Embedder(self.ens, self.config)

    def save(self, raw: str, pred: CasePrediction) -> None:
        remove_stale_temps(self.out_dir, [f"{pred.case_id}.json"])
        write_json_atomic(self.record_path(raw), case_record(pred, self.ens, self.model_fp, self.inputs[raw]))

    def work(self, item: tuple[str, list[SlideSpec]]) -> ItemResult:
        raw, slides = item
        bad = [s.problem for s in slides if s.problem]  # e.g. a GDC download that failed its check
        if bad:
            raise SlideError(f"case {self.safe[raw]}: " + "; ".join(bad))
        if raw in self.by_id:
            return self.by_id[raw].item_result()
        pred = predict_case(self.safe[raw], slides, self.ens, self.config, self.embedder, self.out_dir)
        if self.embedder is not None:
            pred.notes += [n for n in self.embedder.notes if n not in pred.notes]
        self.by_id[raw] = pred
        self.save(raw, pred)
        return pred.item_result()

    def prediction_of(self, res: ItemResult) -> CasePrediction:
        """The case's prediction; a record of status ``failed`` for a case that failed before it had one."""
        raw = next(r for r in self.cases if self.safe[r] == res.item)
        if raw not in self.by_id:
            self.by_id[raw] = CasePrediction(case_id=res.item, slide_ids=[s.slide_id for s in self.cases[raw]],
                                             status="failed", message=res.message, seconds={"total": res.seconds})
            self.save(raw, self.by_id[raw])
        return self.by_id[raw]


def _prepare(specs: Sequence[SlideSpec], model_dir: Path | str, config: PredictConfig
             ) -> tuple[Ensemble, Sequence[SlideSpec], str]:
    """The fold models, the slides (the bags of ``--features`` when none are given) and the resolved device;
    configuration problems raise here, before any case runs."""
    device = str(resolve_device(config.device))
    ens = load_ensemble(model_dir, config.folds, device)
    if config.features_dir is not None and not Path(config.features_dir).is_dir():
        raise ConfigError(f"--features {config.features_dir}: no such directory")
    if not specs:
        if config.features_dir is None:
            raise ConfigError("no slides given: pass slide files, directories, glob patterns or --manifest")
        specs = specs_from_features_dir(Path(config.features_dir))
    existing_rows(Path(config.out) / "predict" / "predictions.csv", model_identity(ens), config.overwrite)
    return ens, specs, device


def predict_cases(specs: Sequence[SlideSpec], model_dir: Path | str, config: PredictConfig,
                  on_case: Callable[[CasePrediction], None] | None = None) -> PredictionRun:
    """Predict every case of ``specs`` (slides grouped by ``case_id``) with the run's fold models.

    Each case's ``<out>/predict/<case_id>.json`` is written atomically as soon as the case is done, and
    reused on a rerun when it was made by the same model from the same input files (see
    :func:`records.reuse_refusal`; ``config.overwrite`` redoes it). ``predictions.csv`` is then rebuilt from
    every per-case JSON of this model in the folder, under a lock (shards or several processes may
    write into one ``--out``). ``config.shard = (i, n)`` keeps every n-th case starting at i.
    Heatmaps go under ``<out>/predict/heatmaps/<case_id>/`` (``config.heatmaps``), and a run log to
    ``<out>/logs/``. A failing case never stops the others (its record has status ``failed``).
    Configuration problems (checkpoints, encoder weights that differ from the training ones, another
    model's ``predictions.csv``) raise before any case runs.
    """
    started = time.time()
    ens, specs, device = _prepare(specs, model_dir, config)
    out_dir = Path(config.out) / "predict"
    run = _CaseRun(specs, ens, config, out_dir)
    run.plan()

    def done(res: ItemResult) -> None:
        pred = run.prediction_of(res)
        if on_case is not None:
            on_case(pred)

    run_items(list(run.cases.items()), lambda it: run.safe[it[0]], run.work, on_done=done)
    preds = [run.by_id[r] for r in run.cases]
    rebuild_predictions_csv(out_dir, model_identity(ens))
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    cfg.update({"model": str(model_dir), "device_resolved": device, "folds_used": ens.folds,
                "reused": sorted(run.safe[r] for r in run.cases if r not in run.todo)})
    log_path = write_run_log(Path(config.out), "predict", cfg, [p.item_result() for p in preds], started)
    return PredictionRun(cases=preds, predictions_csv=out_dir / "predictions.csv", log_path=log_path,
                         ensemble_folds=ens.folds, encoder=ens.encoder)


def _inputs(slides: Sequence[SlideSpec], config: PredictConfig) -> list[dict]:
    """Input files of a case for the reuse check: its bags with ``--features``, else its slide files."""
    files = []
    for s in slides:
        if config.features_dir is not None:
            try:
                files.append(bag_path(Path(config.features_dir), s))
            except InputError:
                files.append(Path(config.features_dir) / f"{s.slide_id}.h5")
        else:
            files.append(s.path)
    return input_signature(files, content_hash=config.features_dir is not None)
