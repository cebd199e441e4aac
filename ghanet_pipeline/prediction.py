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

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .bags import COMPAT_KEYS
from .batch import ItemResult, run_items, write_run_log
from .errors import CheckpointError, ConfigError, InputError, MismatchError, SlideError
from .inputs import SlideSpec
from .ioutils import atomic_path, safe_child, sanitize_ids, write_json_atomic

log = logging.getLogger(__name__)

#: encoder settings a bag must share with the model (keys of checkpoint ``encoder`` and bag attrs)
ENCODER_KEYS = COMPAT_KEYS
#: checkpoint metadata keys prediction needs
REQUIRED_META = ("model", "model_config", "encoder", "train_risk_median", "bin_edges_months")
#: version of the per-case JSON written here
PREDICTION_SCHEMA = 1

# =========================================================================== pure ensemble arithmetic


@dataclass(frozen=True)
class RiskSummary:
    """Ensemble risk: mean over fold models, sample std (ddof=1, None for one model), min, max."""

    mean: float
    std: float | None
    min: float
    max: float
    n: int


def summarize_risks(risks: Sequence[float]) -> RiskSummary:
    """Mean, spread (sample std, min, max) of the fold models' risks."""
    r = np.asarray(risks, dtype=np.float64)
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise ValueError(f"need at least one finite risk, got {list(r)}")
    std = float(r.std(ddof=1)) if r.size > 1 else None
    return RiskSummary(mean=float(r.mean()), std=std, min=float(r.min()), max=float(r.max()), n=int(r.size))


@dataclass(frozen=True)
class GroupDecision:
    """High/low risk group of a case (see the module doc for the rule).

    ``threshold`` = mean of the fold models' training medians; ``margin`` = mean risk - threshold
    (> 0 means high); ``folds_high`` = how many single models put the case above their own median.
    """

    group: str
    threshold: float
    margin: float
    folds_high: int
    n_folds: int


def risk_group(risks: Sequence[float], train_medians: Sequence[float]) -> GroupDecision:
    """``high`` when ``mean(risks) > mean(train_medians)`` (strictly), else ``low``."""
    r = np.asarray(risks, dtype=np.float64)
    m = np.asarray(train_medians, dtype=np.float64)
    if r.shape != m.shape or r.size == 0:
        raise ValueError(f"need one training median per risk, got {r.size} risks and {m.size} medians")
    threshold = float(m.mean())
    mean_risk = float(r.mean())
    return GroupDecision(group="high" if mean_risk > threshold else "low", threshold=threshold,
                         margin=mean_risk - threshold, folds_high=int((r > m).sum()), n_folds=int(r.size))


@dataclass(frozen=True)
class SurvivalCurve:
    """Ensemble survival: ``S[j]`` = P(survive past ``edges_months[j + 1]``); ``S_std`` over models."""

    edges_months: list[float]
    S: list[float]
    S_std: list[float] | None
    edges_differ: bool


def ensemble_survival(S: np.ndarray, edges_months: np.ndarray, atol_months: float = 1e-6) -> SurvivalCurve:
    """Average the fold models' survival curves.

    ``S`` (K, B): each model's survival past the end of each bin; ``edges_months`` (K, B + 1): each
    model's bin edges. Same edges: plain mean per bin. Different edges: each curve (knots
    ``(e_0, 1)`` and ``(e_{j+1}, S_j)``) is linearly interpolated at the mean edges first.
    """
    S = np.atleast_2d(np.asarray(S, dtype=np.float64))
    E = np.atleast_2d(np.asarray(edges_months, dtype=np.float64))
    if E.shape != (S.shape[0], S.shape[1] + 1):
        raise ValueError(f"edges shape {E.shape} does not fit survival shape {S.shape} (need K x (B+1))")
    mean_edges = E.mean(axis=0)
    differ = bool(np.any(np.abs(E - E[0]) > atol_months))
    if differ:
        aligned = np.empty_like(S)
        for k in range(S.shape[0]):
            knots_t = E[k]
            knots_s = np.concatenate([[1.0], S[k]])
            aligned[k] = np.interp(mean_edges[1:], knots_t, knots_s)
        S = aligned
    std = S.std(axis=0, ddof=1).tolist() if S.shape[0] > 1 else None
    return SurvivalCurve(edges_months=mean_edges.tolist(), S=S.mean(axis=0).tolist(), S_std=std, edges_differ=differ)


def encoder_differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Human-readable differences of the encoder settings (``ENCODER_KEYS``); missing keys count."""
    diffs = []
    for key in ENCODER_KEYS:
        a, b = expected.get(key), found.get(key)
        if b is None:
            diffs.append(f"{key}: model {a!r}, features have none")
            continue
        if key == "target_mpp":
            same = a is not None and math.isclose(float(a), float(b), rel_tol=1e-3)
        elif key in ("input_size", "patch_size"):
            same = a is not None and int(a) == int(b)
        else:
            same = str(a) == str(b)
        if not same:
            diffs.append(f"{key}: model {a!r}, features {b!r}")
    return diffs


def check_encoder(expected: dict[str, Any], found: dict[str, Any], what: str) -> None:
    """Raise :class:`MismatchError` when ``found`` (bag attrs / current encoder) differs from the model."""
    diffs = encoder_differences(expected, found)
    if diffs:
        raise MismatchError(
            f"{what} does not match the encoder the model was trained with ({'; '.join(diffs)}). Features from "
            f"another encoder, other weights, input size or resolution give confident nonsense. Use the "
            f"weights the model was trained with (--weights FILE whose sha256 is {expected.get('weights_sha256')}) "
            f"or re-extract the features")


# =========================================================================== the ensemble


@dataclass
class FoldModel:
    """One fold's model (eval mode, on the ensemble's device) and its checkpoint metadata."""

    fold: int
    path: Path
    model: Any
    meta: dict[str, Any]


@dataclass
class EnsembleOutput:
    """Outputs of every fold model on one case bag (N patches).

    ``risks`` (K,), ``S`` (K, B), ``edges`` (K, B + 1), ``medians`` (K,); ``w_mor`` (N,) and
    ``assoc_masked`` (G, N) are means over the models (None when the model has none).
    """

    risks: np.ndarray
    S: np.ndarray
    edges: np.ndarray
    medians: np.ndarray
    w_mor: np.ndarray | None
    assoc_masked: np.ndarray | None


def segment_params_for(recorded: dict[str, Any], encoder_settings: dict[str, Any]) -> "SegmentParams":
    """Segmentation settings for new slides: those the training bags were made with (tissue threshold,
    minimum tissue fraction and areas ...), else the defaults; um/px and patch size always come from
    the checkpoint's encoder record, so the patches match what the model was trained on."""
    from dataclasses import fields  # noqa: PLC0415

    from .segment import SegmentParams  # noqa: PLC0415

    known = {f.name for f in fields(SegmentParams)}
    kwargs = {k: v for k, v in recorded.items() if k in known}
    kwargs.update(target_mpp=float(encoder_settings["target_mpp"]), patch_size=int(encoder_settings["patch_size"]))
    return SegmentParams(**kwargs)


@dataclass
class Ensemble:
    """The fold models of one training run, loaded once."""

    run_dir: Path
    members: list[FoldModel]
    device: str

    @property
    def folds(self) -> list[int]:
        return [m.fold for m in self.members]

    @property
    def encoder(self) -> dict[str, Any]:
        """Encoder settings shared by all members (checked at load)."""
        return dict(self.members[0].meta["encoder"])

    @property
    def families(self) -> list[str]:
        return list(self.members[0].meta.get("families") or [])

    @property
    def segment_params(self) -> dict[str, Any]:
        """Segmentation settings of the training bags (empty for older checkpoints / CLAM bags)."""
        return dict(self.members[0].meta.get("segment_params") or {})

    @property
    def topk(self) -> float:
        return float(self.members[0].meta.get("model_config", {}).get("topk", 0.2))

    @property
    def model_name(self) -> str:
        return str(self.members[0].meta.get("model"))

    def forward(self, features: np.ndarray, want_maps: bool = True) -> EnsembleOutput:
        """Run every member on ``features`` (N, D) of one case; no gradients."""
        import torch  # noqa: PLC0415

        from .models import genomic_weights  # noqa: PLC0415

        x = torch.as_tensor(np.asarray(features, dtype=np.float32)).to(self.device)
        risks, surv, edges, medians, w_mors, assocs = [], [], [], [], [], []
        with torch.inference_mode():
            for m in self.members:
                out = m.model(x)
                risks.append(float(out["risk"].reshape(-1)[0].float().cpu()))
                surv.append(out["S"].reshape(-1).float().cpu().numpy().astype(np.float64))
                edges.append(np.asarray(m.meta["bin_edges_months"], dtype=np.float64))
                medians.append(float(m.meta["train_risk_median"]))
                if want_maps and out.get("w_mor") is not None:
                    w_mors.append(out["w_mor"].reshape(-1).float().cpu().numpy().astype(np.float64))
                if want_maps and out.get("assoc") is not None:
                    topk = float(m.meta.get("model_config", {}).get("topk", 0.2))
                    assocs.append(genomic_weights(out["assoc"].float(), topk).cpu().numpy().astype(np.float64))
        return EnsembleOutput(
            risks=np.asarray(risks), S=np.vstack(surv), edges=np.vstack(edges), medians=np.asarray(medians),
            w_mor=np.mean(w_mors, axis=0) if len(w_mors) == len(self.members) and w_mors else None,
            assoc_masked=np.mean(assocs, axis=0) if len(assocs) == len(self.members) and assocs else None)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda:0`` when available else ``cpu``; unusable devices raise ConfigError (``features``)."""
    from .features import resolve_device as _resolve  # noqa: PLC0415

    return str(_resolve(device))


def find_fold_dirs(run_dir: Path | str, folds: Sequence[int] | None = None) -> list[tuple[int, Path]]:
    """``(fold, dir)`` of the checkpoints in a training run (``fold_<k>/``) or of one fold dir itself."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "no such directory"
        raise CheckpointError(f"--model {run_dir}: {what}; pass a training run folder "
                              f"(<out>/train/<run>/ with fold_<k>/ inside) or one fold_<k>/ folder")
    if (run_dir / "model.json").exists():
        try:
            k = int(run_dir.name.rsplit("_", 1)[-1]) if run_dir.name.startswith("fold_") else 0
        except ValueError:
            k = 0
        found = {k: run_dir}
    else:
        found = {}
        for d in sorted(run_dir.glob("fold_*")):
            try:
                found[int(d.name[len("fold_"):])] = d
            except ValueError:
                continue
        if not found:
            raise CheckpointError(f"--model {run_dir}: no fold_<k>/ folders with checkpoints inside; is it a "
                                  f"training run folder written by 'ghanet train' (<out>/train/<run>/)?")
    if folds is not None:
        missing = [f for f in folds if f not in found]
        if missing:
            raise ConfigError(f"--folds {','.join(map(str, folds))}: fold(s) {', '.join(map(str, missing))} not in "
                              f"{run_dir} (available: {', '.join(map(str, sorted(found)))})")
        return [(f, found[f]) for f in folds]
    return sorted(found.items())


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    missing = [k for k in REQUIRED_META if meta.get(k) is None]
    enc = meta.get("encoder") or {}
    missing += [f"encoder.{k}" for k in ENCODER_KEYS if isinstance(enc, dict) and enc.get(k) is None]
    if missing:
        raise CheckpointError(f"checkpoint {path}: metadata lacks {', '.join(missing)}; it was written by an "
                              f"incompatible (older) version of ghanet - retrain with this version")
    edges = meta["bin_edges_months"]
    if not (isinstance(edges, list) and len(edges) >= 2 and all(isinstance(e, (int, float)) for e in edges)
            and all(b > a for a, b in zip(edges, edges[1:]))):
        raise CheckpointError(f"checkpoint {path}: bin_edges_months {edges!r} must be increasing numbers")


def load_ensemble(run_dir: Path | str, folds: Sequence[int] | None = None, device: str = "cpu") -> Ensemble:
    """Load the fold models of ``run_dir`` (all, or ``folds``) once, in eval mode on ``device``.

    Raises :class:`CheckpointError` for missing files / incompatible metadata and
    :class:`MismatchError` when the folds disagree on the encoder settings or the gene families.
    """
    from . import models  # noqa: PLC0415

    members: list[FoldModel] = []
    for k, d in find_fold_dirs(run_dir, folds):
        for name in ("model.json", "model.safetensors"):
            if not (d / name).is_file():
                raise CheckpointError(f"checkpoint {d}: {name} is missing; the training run is incomplete "
                                      f"(rerun 'ghanet train --resume') or pass --folds without fold {k}")
        model, meta = models.load_checkpoint(d, device=device)
        _check_meta(meta, d / "model.json")
        model.eval()
        members.append(FoldModel(fold=k, path=d, model=model, meta=meta))
    first = members[0]
    for m in members[1:]:
        diffs = encoder_differences(first.meta["encoder"], m.meta["encoder"])
        if diffs:
            raise MismatchError(f"fold models of {run_dir} were trained on different features (fold {first.fold} vs "
                                f"fold {m.fold}: {'; '.join(diffs)}); predict with --folds from one setting")
        if list(m.meta.get("families") or []) != list(first.meta.get("families") or []):
            raise MismatchError(f"fold models of {run_dir} use different gene families (fold {first.fold} vs fold {m.fold})")
        if len(m.meta["bin_edges_months"]) != len(first.meta["bin_edges_months"]):
            raise MismatchError(f"fold models of {run_dir} use different numbers of time bins")
    return Ensemble(run_dir=Path(run_dir), members=members, device=device)


# =========================================================================== per-case pipeline


@dataclass
class PredictConfig:
    """Options of :func:`predict_cases` (CLI flags of ``ghanet predict``).

    ``features_dir``: folder of existing bags (``<slide_id>.h5``/``.pt``); segmentation and extraction
    are skipped. ``assume_encoder``: accept bags without encoder attributes (CLAM/TRIDENT) as made with
    the model's encoder. ``weights``: encoder weights (file, ``random[:seed]``, None = torch hub cache).
    """

    out: Path = Path("ghanet-out")
    folds: list[int] | None = None
    features_dir: Path | None = None
    assume_encoder: bool = False
    heatmaps: bool = False
    device: str = "auto"
    weights: str | None = None
    batch_size: int = 64
    num_workers: int = 0
    overwrite: bool = False


@dataclass
class CasePrediction:
    """Result of one case. ``status``: ``done``, ``no tissue`` (no score) or ``failed`` (``message``).

    Risks are unitless (higher = worse; ``-sum(S)``); ``survival[j]`` is the probability of surviving
    past ``bin_edges_months[j + 1]`` months; ``seconds`` per stage (segment, extract, model, heatmaps).
    """

    case_id: str
    slide_ids: list[str]
    status: str = "done"
    message: str = ""
    risk: float | None = None
    risk_std: float | None = None
    risk_min: float | None = None
    risk_max: float | None = None
    risk_per_fold: dict[int, float] = field(default_factory=dict)
    threshold: float | None = None
    risk_group: str | None = None
    folds_high: int | None = None
    n_folds: int = 0
    survival: list[float] | None = None
    survival_std: list[float] | None = None
    bin_edges_months: list[float] | None = None
    bin_edges_differ: bool = False
    n_patches: int = 0
    patches_per_slide: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    encoder_check: str = ""
    heatmaps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("done", "no tissue")

    def row(self, model: str, n_bins: int) -> dict[str, Any]:
        """One line of ``predictions.csv`` (empty cells for missing values)."""
        def f(v: float | None) -> str:
            return "" if v is None else f"{v:.6g}"

        row: dict[str, Any] = {
            "case_id": self.case_id, "status": self.status, "risk": f(self.risk), "risk_std": f(self.risk_std),
            "risk_min": f(self.risk_min), "risk_max": f(self.risk_max), "risk_group": self.risk_group or "",
            "threshold": f(self.threshold), "folds_high": "" if self.folds_high is None else self.folds_high,
            "n_folds": self.n_folds}
        for j in range(n_bins):
            row[f"S_bin{j + 1}"] = f(self.survival[j]) if self.survival else ""
        row["bin_edges_months"] = ";".join(f"{e:.4g}" for e in self.bin_edges_months or [])
        row["patches"] = self.n_patches
        for stage in STAGES:
            row[f"seconds_{stage}"] = f(self.seconds.get(stage))
        row.update({"slide_ids": ";".join(self.slide_ids), "model": model, "message": self.message})
        return row

    def item_result(self) -> ItemResult:
        return ItemResult(item=self.case_id, status=self.status, seconds=self.seconds.get("total", 0.0),
                          message=self.message,
                          metrics={"risk": self.risk if self.risk is not None else "",
                                   "risk_std": self.risk_std if self.risk_std is not None else "",
                                   "group": self.risk_group or "", "patches": self.n_patches})


#: timed stages of a case (``seconds_<stage>`` columns)
STAGES = ("segment", "extract", "model", "heatmaps", "total")


@dataclass
class PredictionRun:
    """What :func:`predict_cases` returns: one :class:`CasePrediction` per case + written files."""

    cases: list[CasePrediction]
    predictions_csv: Path
    log_path: Path
    ensemble_folds: list[int]
    encoder: dict[str, Any]

    @property
    def results(self) -> list[ItemResult]:
        return [c.item_result() for c in self.cases]


def group_cases(specs: Sequence[SlideSpec]) -> dict[str, list[SlideSpec]]:
    """Slides by case (first-seen order); several slides of a case are pooled into one bag."""
    cases: dict[str, list[SlideSpec]] = {}
    for s in specs:
        cases.setdefault(s.case_id, []).append(s)
    return cases


def specs_from_features_dir(features_dir: Path) -> list[SlideSpec]:
    """One spec per bag in ``features_dir`` (``*.h5``/``*.pt``; case = slide id); used when no slides are given."""
    from .bags import find_bags  # noqa: PLC0415
    from .inputs import sanitise_specs  # noqa: PLC0415

    found = find_bags(features_dir)
    if not found:
        raise InputError(f"--features {features_dir}: no .h5 or .pt bags inside")
    return sanitise_specs([SlideSpec(slide_id=sid, path=p, case_id=sid, raw_slide_id=sid) for sid, p in found.items()])


def _bag_path(features_dir: Path, spec: SlideSpec) -> Path:
    from .bags import find_bags  # noqa: PLC0415

    found = find_bags(features_dir, [spec.slide_id, spec.raw_slide_id])
    path = found.get(spec.slide_id) or found.get(spec.raw_slide_id)
    if path is None:
        raise InputError(f"slide {spec.slide_id!r}: no bag {spec.slide_id}.h5 (or .pt) in --features {features_dir}")
    return path


@dataclass
class _SlideBag:
    spec: SlideSpec
    features: np.ndarray
    coords: np.ndarray | None  # None for bags without coords (CLAM .pt): no heatmaps
    attrs: dict[str, Any]


class _Embedder:
    """Turns a slide into its bag, reusing the segment and features stages (encoder loaded once).

    The encoder is built once per run and moved to the device once; segmentation uses the model's
    target um/px and patch size (other settings: segment defaults), extraction its input size.
    Existing valid coords/bags under ``<out>`` are reused (``overwrite`` redoes them).
    """

    def __init__(self, ens: Ensemble, config: PredictConfig) -> None:
        from . import encoders  # noqa: PLC0415
        from .features import ExtractParams, Extractor  # noqa: PLC0415

        self.config = config
        self.settings = ens.encoder
        encoder = encoders.load_encoder(self.settings["encoder"], config.weights)
        source = str(encoder.weights_path) if encoder.weights_path else encoder.weights_id
        check_encoder(self.settings, {**self.settings, "weights_sha256": encoder.weights_id},
                      f"encoder weights {source}")
        self.notes = list(encoder.notes)
        self.last_note = ""  # why the last embedded slide gave no bag (no tissue)
        params = ExtractParams(encoder=self.settings["encoder"], weights=config.weights,
                               input_size=int(self.settings["input_size"]), batch_size=config.batch_size,
                               num_workers=config.num_workers, device=config.device)
        self.extractor = Extractor(params, config.device, encoder=encoder)
        self.segment_params = segment_params_for(ens.segment_params, self.settings)

    def embed(self, spec: SlideSpec, seconds: dict[str, float]) -> _SlideBag | None:
        """Bag of one slide (None when the slide has no tissue patch); adds to ``seconds``."""
        from . import bags  # noqa: PLC0415
        from .segment import segment_slide  # noqa: PLC0415

        out = Path(self.config.out)
        t = time.perf_counter()
        params = self.segment_params
        res = segment_slide(spec, out, params, overwrite=self.config.overwrite)
        seconds["segment"] += time.perf_counter() - t
        if not res.ok:
            raise SlideError(res.message if spec.slide_id in res.message else f"slide {spec.slide_id}: {res.message}")
        if not res.metrics.get("patches"):
            self.last_note = f"slide {spec.slide_id}: {res.message or 'no tissue patch'}"
            return None
        t = time.perf_counter()
        res = self.extractor.extract(spec, out, overwrite=self.config.overwrite)
        if not res.ok:
            raise SlideError(res.message if spec.slide_id in res.message else f"slide {spec.slide_id}: {res.message}")
        bag = bags.read_bag(res.metrics["bag"])
        seconds["extract"] += time.perf_counter() - t
        check_encoder(self.settings, bag.attrs, f"bag {bag.path}")
        return _SlideBag(spec=spec, features=bag.features, coords=np.asarray(bag.coords, dtype=np.int64),
                         attrs=dict(bag.attrs))


def _read_existing_bag(path: Path, ens: Ensemble, config: PredictConfig, spec: SlideSpec) -> tuple[_SlideBag, str]:
    """Read a bag given with ``--features`` and check it against the model's encoder settings."""
    from . import bags  # noqa: PLC0415

    bag = bags.read_bag(path)
    attrs = dict(bag.attrs or {})
    if not any(attrs.get(k) is not None for k in ("encoder", "weights_sha256")):
        if not config.assume_encoder:
            raise MismatchError(
                f"bag {path} has no encoder attributes (a CLAM/TRIDENT bag?), so ghanet cannot check that it was "
                f"made with the model's encoder ({_describe(ens.encoder)}). If you are sure it was, pass "
                f"--assume-encoder; otherwise re-extract it with 'ghanet extract-features'")
        how = "assumed (--assume-encoder)"
    else:
        check_encoder(ens.encoder, attrs, f"bag {path}")
        how = "checked"
    feats = np.asarray(bag.features, dtype=np.float32)
    coords = None if bag.coords is None else np.asarray(bag.coords, dtype=np.int64)
    return _SlideBag(spec=spec, features=feats, coords=coords, attrs=attrs), how


def _describe(enc: dict[str, Any]) -> str:
    return (f"{enc.get('encoder')}, weights {str(enc.get('weights_sha256'))[:16]}, input {enc.get('input_size')} px, "
            f"{enc.get('target_mpp')} um/px, patch {enc.get('patch_size')} px")


def predict_case(case_id: str, specs: Sequence[SlideSpec], ens: Ensemble, config: PredictConfig,
                 embedder: _Embedder | None, out_dir: Path) -> CasePrediction:
    """Predict one case (all its slides pooled). Raises on a failing slide (the caller records it)."""
    t0 = time.perf_counter()
    pred = CasePrediction(case_id=case_id, slide_ids=[s.slide_id for s in specs])
    seconds = {"segment": 0.0, "extract": 0.0, "model": 0.0, "heatmaps": 0.0}
    slide_bags: list[_SlideBag] = []
    errors: list[str] = []
    checks: set[str] = set()
    for spec in specs:
        try:
            if config.features_dir is not None:
                t = time.perf_counter()
                sb, how = _read_existing_bag(_bag_path(config.features_dir, spec), ens, config, spec)
                seconds["extract"] += time.perf_counter() - t
                checks.add(how)
            else:
                assert embedder is not None
                embedder.last_note = ""
                sb = embedder.embed(spec, seconds)
                checks.add("checked")
                if sb is None and embedder.last_note:
                    pred.notes.append(embedder.last_note)
        except MismatchError:
            raise
        except (SlideError, InputError, OSError, ValueError, RuntimeError) as exc:
            msg = str(exc) if isinstance(exc, (SlideError, InputError)) else f"{type(exc).__name__}: {exc}"
            errors.append(f"slide {spec.slide_id}: {msg}")
            continue
        pred.patches_per_slide[spec.slide_id] = 0 if sb is None else len(sb.features)
        if sb is not None and len(sb.features):
            slide_bags.append(sb)
    pred.encoder_check = ", ".join(sorted(checks))
    if errors:
        if len(errors) == len(specs):
            raise SlideError(f"case {case_id}: none of its {len(specs)} slide(s) could be read - "
                             + " | ".join(errors))
        raise SlideError(f"case {case_id}: {len(errors)} of its {len(specs)} slides could not be read, so no score "
                         f"(it would use only part of the tissue) - " + " | ".join(errors)
                         + " - fix the slide or remove it from the manifest")
    if not slide_bags:
        pred.status = "no tissue"
        pred.message = "no tissue patch in any slide of the case; no score" + (
            f" ({'; '.join(pred.notes)})" if pred.notes else "")
        pred.seconds = {**{k: round(v, 3) for k, v in seconds.items()}, "total": round(time.perf_counter() - t0, 3)}
        return pred
    # pool the case's slides into one bag
    dims = {sb.features.shape[1] for sb in slide_bags}
    if len(dims) > 1:
        raise MismatchError(f"case {case_id}: its bags have different feature sizes {sorted(dims)}")
    feats = np.concatenate([sb.features for sb in slide_bags])
    t = time.perf_counter()
    out = ens.forward(feats, want_maps=config.heatmaps)
    seconds["model"] = time.perf_counter() - t
    rs = summarize_risks(out.risks)
    grp = risk_group(out.risks, out.medians)
    curve = ensemble_survival(out.S, out.edges)
    pred.risk, pred.risk_std, pred.risk_min, pred.risk_max = rs.mean, rs.std, rs.min, rs.max
    pred.risk_per_fold = {m.fold: float(r) for m, r in zip(ens.members, out.risks)}
    pred.threshold, pred.risk_group, pred.folds_high, pred.n_folds = grp.threshold, grp.group, grp.folds_high, grp.n_folds
    pred.survival, pred.survival_std = curve.S, curve.S_std
    pred.bin_edges_months, pred.bin_edges_differ = curve.edges_months, curve.edges_differ
    pred.n_patches = int(len(feats))
    if config.heatmaps:
        t = time.perf_counter()
        try:
            _heatmaps(pred, slide_bags, out, ens, out_dir)
        except (SlideError, InputError, OSError, ValueError) as exc:  # the score stands; say what is missing
            pred.message = f"heatmaps failed: {exc}"
        seconds["heatmaps"] = time.perf_counter() - t
    pred.seconds = {**{k: round(v, 3) for k, v in seconds.items()}, "total": round(time.perf_counter() - t0, 3)}
    return pred


def _heatmaps(pred: CasePrediction, slide_bags: list[_SlideBag], out: EnsembleOutput, ens: Ensemble,
              out_dir: Path) -> None:
    from .heatmaps import SlideScores, write_case_heatmaps  # noqa: PLC0415

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


def _model_identity(ens: Ensemble) -> str:
    return f"{Path(ens.run_dir).resolve()}#folds={','.join(map(str, ens.folds))}"


def _existing_rows(path: Path, model: str, overwrite: bool) -> list[dict[str, str]]:
    """Rows of an earlier ``predictions.csv`` of the same model; another model's file is an error."""
    if not path.exists() or overwrite:
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        old = list(csv.DictReader(fh))
    others = {r.get("model") for r in old} - {model}
    if others:
        raise ConfigError(f"{path} holds predictions of another model ({sorted(map(str, others))[0]}); use another "
                          f"--out or --overwrite to replace it")
    return old


def _write_csv(path: Path, cases: list[CasePrediction], model: str, n_bins: int, overwrite: bool) -> None:
    """Write ``predictions.csv``; rows of other cases from an earlier run of the same model are kept."""
    new_rows = [c.row(model, n_bins) for c in cases]
    fields = list(new_rows[0]) if new_rows else ["case_id"]
    kept: list[dict[str, str]] = []
    old = _existing_rows(path, model, overwrite)
    if old:
        done = {c.case_id for c in cases}
        kept = [r for r in old if r.get("case_id") not in done and list(r) == fields]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(kept + new_rows)


def predict_cases(specs: Sequence[SlideSpec], model_dir: Path | str, config: PredictConfig,
                  on_case: Callable[[CasePrediction], None] | None = None) -> PredictionRun:
    """Predict every case of ``specs`` (slides grouped by ``case_id``) with the run's fold models.

    Writes ``<out>/predict/predictions.csv``, ``<out>/predict/<case_id>.json``, heatmaps under
    ``<out>/predict/heatmaps/<case_id>/`` (``config.heatmaps``) and a run log. A failing case never
    stops the others (its row has status ``failed`` and the message). Configuration problems
    (checkpoints, encoder weights that differ from the training ones) raise before any case runs.
    """
    started = time.time()
    out = Path(config.out)
    out_dir = out / "predict"
    device = resolve_device(config.device)
    ens = load_ensemble(model_dir, config.folds, device)
    if config.features_dir is not None and not Path(config.features_dir).is_dir():
        raise ConfigError(f"--features {config.features_dir}: no such directory")
    if not specs:
        if config.features_dir is None:
            raise ConfigError("no slides given: pass slide files, directories, glob patterns or --manifest")
        specs = specs_from_features_dir(Path(config.features_dir))
    csv_path = out_dir / "predictions.csv"
    model_id = _model_identity(ens)
    _existing_rows(csv_path, model_id, config.overwrite)  # refuse another model's table before any work
    embedder = None if config.features_dir is not None else _Embedder(ens, config)
    cases = group_cases(specs)
    safe = sanitize_ids(list(cases), what="case_id")
    by_id: dict[str, CasePrediction] = {}

    def work(item: tuple[str, list[SlideSpec]]) -> ItemResult:
        raw, slides = item
        pred = predict_case(safe[raw], slides, ens, config, embedder, out_dir)
        if embedder is not None:
            pred.notes += [n for n in embedder.notes if n not in pred.notes]
        by_id[raw] = pred
        return pred.item_result()

    def done(res: ItemResult) -> None:
        raw = next(r for r in cases if safe[r] == res.item)
        if raw not in by_id:  # failed before a prediction object existed
            by_id[raw] = CasePrediction(case_id=res.item, slide_ids=[s.slide_id for s in cases[raw]],
                                        status="failed", message=res.message,
                                        seconds={"total": res.seconds})
        if on_case is not None:
            on_case(by_id[raw])

    run_items(list(cases.items()), lambda it: safe[it[0]], work, on_done=done)
    preds = [by_id[r] for r in cases]
    n_bins = len(ens.members[0].meta["bin_edges_months"]) - 1
    for p in preds:
        record = {"schema_version": PREDICTION_SCHEMA, "model": model_id, "model_name": ens.model_name,
                  "folds": ens.folds, "encoder": ens.encoder, "threshold_rule":
                  "high if mean fold risk > mean of the folds' training median risks", **asdict(p)}
        record["risk_per_fold"] = {str(k): v for k, v in p.risk_per_fold.items()}
        write_json_atomic(safe_child(out_dir, f"{p.case_id}.json"), record)
    _write_csv(csv_path, preds, model_id, n_bins, config.overwrite)
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    cfg.update({"model": str(model_dir), "device_resolved": device, "folds_used": ens.folds})
    log_path = write_run_log(out, "predict", cfg, [p.item_result() for p in preds], started)
    return PredictionRun(cases=preds, predictions_csv=csv_path, log_path=log_path, ensemble_folds=ens.folds,
                         encoder=ens.encoder)
