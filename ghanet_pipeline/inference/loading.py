"""Loading a training run's fold models once (checkpoint checks, encoder and segmentation settings they
require) and applying them to a case bag (`Ensemble`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import CheckpointError, ConfigError, MismatchError
from ..features.compatibility import COMPAT_KEYS, encoder_differences

if TYPE_CHECKING:
    from ..wsi.segment import SegmentParams
log = logging.getLogger(__name__)




#: checkpoint metadata keys prediction needs
REQUIRED_META = ("model", "model_config", "encoder", "train_risk_median", "bin_edges_months")


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


def segment_params_for(recorded: dict[str, Any], encoder_settings: dict[str, Any]) -> SegmentParams:
    """Segmentation settings for new slides: those the training bags were made with (tissue threshold,
    minimum tissue fraction and areas ...), else the defaults; um/px and patch size always come from
    the checkpoint's encoder record, so the patches match what the model was trained on."""
    from dataclasses import fields

    from ..wsi.segment import SegmentParams  # noqa: F811

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
        import torch

        from ..models import genomic_weights

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
                    mc = m.meta.get("model_config", {})
                    g = genomic_weights(out["assoc"].float(), float(mc.get("topk", 0.2)), mc.get("topk_rule", "ceil"))
                    assocs.append(g.cpu().numpy().astype(np.float64))
        return EnsembleOutput(
            risks=np.asarray(risks), S=np.vstack(surv), edges=np.vstack(edges), medians=np.asarray(medians),
            w_mor=np.mean(w_mors, axis=0) if len(w_mors) == len(self.members) and w_mors else None,
            assoc_masked=np.mean(assocs, axis=0) if len(assocs) == len(self.members) and assocs else None)


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
    missing += [f"encoder.{k}" for k in COMPAT_KEYS if isinstance(enc, dict) and enc.get(k) is None]
    if missing:
        raise CheckpointError(f"checkpoint {path}: metadata lacks {', '.join(missing)}; it was written by an "
                              f"incompatible (older) version of ghanet - retrain with this version")
    edges = meta["bin_edges_months"]
    if not (isinstance(edges, list) and len(edges) >= 2 and all(isinstance(e, (int, float)) for e in edges)
            and all(b > a for a, b in zip(edges, edges[1:], strict=False))):
        raise CheckpointError(f"checkpoint {path}: bin_edges_months {edges!r} must be increasing numbers")


def load_ensemble(run_dir: Path | str, folds: Sequence[int] | None = None, device: str = "cpu") -> Ensemble:
    """Load the fold models of ``run_dir`` (all, or ``folds``) once, in eval mode on ``device``.

    Raises :class:`CheckpointError` for missing files / incompatible metadata and
    :class:`MismatchError` when the folds disagree on the encoder settings or the gene families.
    """
    from .. import models

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


def find_training_runs(out: Path | str) -> list[Path]:
    """Training runs under ``<out>/train/``: folders with at least one ``fold_<k>/model.json``."""
    train = Path(out) / "train"
    if not train.is_dir():
        return []
    return sorted(d for d in train.iterdir() if d.is_dir() and any(d.glob("fold_*/model.json")))


def default_model(out: Path | str) -> Path:
    """The model ``predict`` uses without ``--model``: the only training run under ``<out>/train/``.

    Raises :class:`ConfigError` (a usage error) when there is none or more than one, listing them and
    saying how to pick one.
    """
    runs = find_training_runs(out)
    if len(runs) == 1:
        return runs[0]
    how = "pass --model <out>/train/<run> (or set the environment variable GHANET_MODEL to that folder)"
    if not runs:
        raise ConfigError(f"no --model given and no training run under {Path(out) / 'train'}; {how}, or run "
                          f"`ghanet train` first (or pass the --out that holds the training run)")
    listed = "\n".join(f"  --model {r}" for r in runs)
    raise ConfigError(f"no --model given and {len(runs)} training runs under {Path(out) / 'train'}:\n{listed}\n"
                      f"pick one: {how}")
