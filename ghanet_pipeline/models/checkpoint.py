"""Checkpoints: ``model.safetensors`` (weights) + ``model.json`` (metadata) in one fold directory.

Loading never unpickles: weights come from safetensors, everything else from JSON, and the model is
rebuilt from the registry name (``model``) and its keyword arguments (``model_config``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..core.errors import CheckpointError, ConfigError, MismatchError
from ..core.files import atomic_path, file_sha256, write_json_atomic
from ..core.fingerprints import DIGEST_CHARS, Fingerprint, component_from_items, component_from_mapping, fingerprint
from ..core.safeload import load_safetensors, save_safetensors
from .registry import create_model

CHECKPOINT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"
#: ``model.json`` keys also written into the safetensors metadata and compared on load
SHARED_KEYS = ("fold", "epoch", "config_hash", "fingerprint_digest")


def save_checkpoint(fold_dir: Path | str, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write the weights and metadata of ``model`` into ``fold_dir``; return the JSON path.

    ``meta`` holds the contract's keys (families, selected, scaler, bin_edges_months, encoder,
    train_risk_median, fold, epoch, ...); ``checkpoint_version``, ``ghanet_version``, ``model``,
    ``model_config`` (from ``model.config``) and ``weights_sha256`` are always set here, whatever ``meta``
    says. Weights are written first (with ``fold``, ``epoch``, ``config_hash``, ``fingerprint_digest`` also in
    their safetensors metadata), the JSON last, both atomically and fsynced, so a readable JSON means a
    complete checkpoint; :func:`load_checkpoint` checks that both files belong together.
    """
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = fold_dir / WEIGHTS_NAME
    st_meta = {"format": "pt", "model": model.name,
               **{k: str(meta[k]) for k in SHARED_KEYS if meta.get(k) is not None}}
    with atomic_path(weights) as tmp:
        save_safetensors(tensors, tmp, metadata=st_meta)  # sorted metadata: same weights, same bytes
    record = dict(meta)
    record.update(checkpoint_version=CHECKPOINT_VERSION, ghanet_version=__version__, model=model.name,
                  model_config=dict(model.config), weights_sha256=file_sha256(weights))
    return write_json_atomic(fold_dir / META_NAME, record)


def read_checkpoint_meta(fold_dir: Path | str) -> dict[str, Any]:
    """Read and check ``model.json`` of ``fold_dir`` (no weights loaded)."""
    meta_path = Path(fold_dir) / META_NAME
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path} not found: {fold_dir} is not a finished ghanet checkpoint "
                              f"(train it again, or point to a fold_<k> directory of a finished run)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is not readable JSON ({exc}); retrain this fold") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} does not hold a JSON object; retrain this fold")
    version = meta.get("checkpoint_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{meta_path} has checkpoint_version {version!r}; this ghanet "
                              f"({__version__}) reads version {CHECKPOINT_VERSION}: use the ghanet version "
                              f"that wrote it ({meta.get('ghanet_version', 'unknown')}) or retrain")
    for key in ("model", "model_config"):
        if key not in meta:
            raise CheckpointError(f"{meta_path} has no {key!r} entry; retrain this fold")
    return meta


def load_checkpoint(fold_dir: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model saved in ``fold_dir`` on ``device`` (eval mode); return ``(model, meta)``.

    Raises :class:`CheckpointError` for a missing file, another checkpoint version, an unknown model,
    weights that do not match the JSON (hash) or the architecture (keys/shapes).
    """
    fold_dir = Path(fold_dir)
    meta = read_checkpoint_meta(fold_dir)
    weights = fold_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found next to {META_NAME}; the checkpoint is incomplete, "
                              f"retrain this fold")
    expected = meta.get("weights_sha256")
    if expected and file_sha256(weights) != expected:
        raise CheckpointError(f"{weights} does not match the weights_sha256 in {META_NAME} (files from "
                              f"different runs mixed?); copy both files of one fold together or retrain")
    try:
        model = create_model(meta["model"], **meta["model_config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{fold_dir / META_NAME}: cannot rebuild model {meta['model']!r}: {exc}") from exc
    state = load_safetensors(weights, "checkpoint weights", "Retrain this fold (or copy both files of the fold "
                             "from the training machine again)", CheckpointError, device=str(device))
    _check_pair(weights, meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not fit model {meta['model']!r} with config "
                              f"{meta['model_config']}: {exc}") from exc
    model.to(device).eval()
    return model, meta


def _check_pair(weights: Path, meta: dict[str, Any]) -> None:
    """Refuse weights whose safetensors metadata name another fold/epoch/run than ``model.json``."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            st_meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{weights} is not a readable safetensors file ({exc}); retrain this fold") from exc
    diffs = [f"{k} {st_meta[k]!r} vs {str(meta[k])!r}" for k in SHARED_KEYS
             if k in st_meta and meta.get(k) is not None and st_meta[k] != str(meta[k])]
    if diffs:
        raise CheckpointError(f"{weights} and {weights.with_name(META_NAME)} belong to different trainings "
                              f"({'; '.join(diffs)}); copy both files of one fold together or retrain")


def checkpoint_fingerprint(fold_dirs: Sequence[Path | str]) -> Fingerprint:
    """Fingerprint of a model made of fold checkpoints, from their ``model.json`` (no weights read).

    Components: ``model`` (item per fold directory name -> its ``weights_sha256``; the weights themselves
    are verified against it whenever :func:`ghanet_pipeline.models.load_checkpoint` loads them),
    ``encoder`` (the bag encoder fields the checkpoints record) and ``training`` (item per fold -> the
    training run's ``fingerprint_digest``, ``unknown`` for checkpoints of older versions). What
    ``predict`` records next to its outputs, so that a rerun with another model is refused.
    """
    metas = {Path(d).name: read_checkpoint_meta(d) for d in fold_dirs}
    if not metas:
        raise MismatchError("no fold checkpoints given: a model fingerprint needs at least one fold_<k> folder")
    first = next(iter(metas.values()))
    weights = {k: str(m.get("weights_sha256", "unknown"))[:DIGEST_CHARS] for k, m in metas.items()}
    training = {k: str(m.get("fingerprint_digest") or "unknown") for k, m in metas.items()}
    return fingerprint(
        model=component_from_items(weights, f"{first.get('model')} model, {len(metas)} fold checkpoint(s)"),
        encoder=component_from_mapping(dict(first.get("encoder") or {})),
        training=component_from_items(training, "training-input fingerprints of the folds"),
    )
