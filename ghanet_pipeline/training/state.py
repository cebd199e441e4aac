"""Per-fold resume state (weights, optimiser moments, RNG and metadata in ONE safetensors file) and
finished-fold outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import MismatchError
from ..core.files import atomic_path

log = logging.getLogger(__name__)


def _optimizer_to_flat(opt) -> tuple[dict[str, Any], dict[str, Any]]:
    """Optimizer state -> (tensors for safetensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if hasattr(v, "detach"):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(opt, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        if not key.startswith("optim."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = t
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


STATE_NAME = "state.safetensors"
STATE_FORMAT = "ghanet-train-state-1"


def _tensors_sha(tensors: Mapping[str, Any]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes (sorted by name)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def save_state(state_dir: Path, model, opt, best_state: Mapping[str, Any] | None, info: dict[str, Any]) -> None:
    """Write ``state_dir/state.safetensors`` atomically: ONE file holding the weights, optimiser moments,
    RNG state and, in its metadata, the epoch, fold, config hash, fingerprint digest, history and
    optimiser scalars (JSON) plus a SHA-256 of all tensors. A kill leaves the previous epoch's file or
    this one, never a mix."""
    import torch

    from ..core.safeload import save_safetensors

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_t, opt_meta = _optimizer_to_flat(opt)
    tensors.update(opt_t)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    if best_state is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()})
    # gradients still pending (carry-over accumulation: the partial sum joins the next epoch's first step)
    tensors.update({f"grad.{k}": p.grad.detach().cpu().contiguous() for k, p in model.named_parameters()
                    if p.grad is not None})
    metadata = {"format": STATE_FORMAT, "epoch": str(int(info["epoch"])), "fold": str(info.get("fold", "")),
                "config_hash": str(info.get("config_hash", "")),
                "fingerprint_digest": str(info.get("fingerprint_digest", "")),
                "info": json.dumps({**info, "optimizer": opt_meta}, allow_nan=False),
                "tensors_sha256": _tensors_sha(tensors)}
    state_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(state_dir / STATE_NAME) as tmp:
        save_safetensors(tensors, tmp, metadata=metadata)
    legacy = state_dir / "state.json"  # two-file state of older versions: never read again
    if legacy.exists():
        legacy.unlink()


def read_state_metadata(state_dir: Path) -> dict[str, str] | None:
    """The metadata of ``state_dir/state.safetensors`` (header only, no tensors), or None when there is
    no usable state file (missing, unreadable, another format)."""
    from safetensors import safe_open

    path = state_dir / STATE_NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # noqa: BLE001 - a damaged file of any kind is "no usable state"
        return None
    return dict(meta) if meta.get("format") == STATE_FORMAT else None


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam over the trainable parameters; the fused kernel where available (same maths; several times
    faster per update on CPU than the for-loop default: ``benchmarks/bench_train_step.py`` times for-loop,
    foreach and fused in one run)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # older torch or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def load_state(state_dir: Path, model, opt, config_hash: str, fingerprint_digest: str = "", fold: int | None = None
               ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """Restore the state saved by :func:`save_state`; return ``(info, best weights)`` or None (start over).

    A state that is truncated, unreadable, of an older two-file format, of another fold or whose tensors
    do not match their recorded SHA-256 is discarded (moved aside as ``state.safetensors.discarded`` with
    a warning naming why); one saved with other options or inputs raises :class:`MismatchError`.
    """
    import torch
    from safetensors.torch import load_file

    path = state_dir / STATE_NAME
    if not path.is_file():
        if (state_dir / "state.json").is_file():
            _discard(state_dir, "it is the two-file state of an older ghanet (cannot be verified)")
        return None
    meta = read_state_metadata(state_dir)
    if meta is None:
        _discard(state_dir, "it is not a readable ghanet state file (truncated or damaged)")
        return None
    if meta.get("config_hash") != config_hash:
        raise MismatchError(f"{path} was saved with other training options; start over with --overwrite "
                            f"or resume with the original options (see config.json)")
    if fingerprint_digest and meta.get("fingerprint_digest") != fingerprint_digest:
        raise MismatchError(f"{path} was saved from other inputs (fingerprint {meta.get('fingerprint_digest')}, "
                            f"now {fingerprint_digest}); start over with --overwrite or use another --run-name")
    if fold is not None and meta.get("fold") != str(fold):
        _discard(state_dir, f"it belongs to fold {meta.get('fold')!r}, not fold {fold}")
        return None
    try:
        tensors = load_file(str(path))
        info = json.loads(meta["info"])
    except Exception as exc:  # noqa: BLE001
        _discard(state_dir, f"it cannot be read ({type(exc).__name__}: {exc})")
        return None
    if _tensors_sha(tensors) != meta.get("tensors_sha256") or str(info.get("epoch")) != meta.get("epoch"):
        _discard(state_dir, "its tensors or epoch do not match the checksum recorded in it")
        return None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for k, p in model.named_parameters():
        if f"grad.{k}" in tensors:
            p.grad = tensors[f"grad.{k}"].to(p.device)
    _optimizer_from_flat(opt, tensors, info["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return info, best


def _discard(state_dir: Path, why: str) -> None:
    """Move an unusable state aside (kept for inspection, never read) and say so."""
    for name in (STATE_NAME, "state.json"):
        p = state_dir / name
        if p.exists():
            p.replace(p.with_name(p.name + ".discarded"))
    log.warning("%s: resume state not used because %s; the fold restarts from epoch 1", state_dir, why)


@dataclass
class FoldOutcome:
    fold: int
    predictions: Any  # DataFrame
    history: list[dict[str, Any]]
    selected_epoch: int
    train_risk_median: float
    case_spearman: Any | None  # DataFrame case_id, family, spearman
    gene_spearman: Any | None  # DataFrame family, gene, spearman, n_cases
    skipped_cases: list[str]
    resumed_from_epoch: int = 0


def fold_complete(fold_dir: Path) -> bool:
    h = fold_dir / "history.json"
    if not (h.is_file() and (fold_dir / "model.json").is_file() and (fold_dir / "model.safetensors").is_file()
            and (fold_dir / "predictions.csv").is_file()):
        return False
    try:
        return bool(json.loads(h.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def load_finished_fold(fold_dir: Path, fold: int) -> FoldOutcome:
    import pandas as pd

    hist = json.loads((fold_dir / "history.json").read_text())
    meta = json.loads((fold_dir / "model.json").read_text())
    # round_trip: pandas' default float parser can be off in the last digit, and a rerun that skips this
    # fold would then rewrite the run's predictions.csv / metrics.json with other numbers
    exact = {"float_precision": "round_trip"}
    pred = pd.read_csv(fold_dir / "predictions.csv", dtype={"case_id": str}, **exact)
    cs = fold_dir / "case_spearman.csv"
    gs = fold_dir / "gene_spearman.csv"
    return FoldOutcome(fold=fold, predictions=pred, history=hist["epochs"], selected_epoch=hist["selected_epoch"],
                       train_risk_median=float(meta["train_risk_median"]),
                       case_spearman=pd.read_csv(cs, dtype={"case_id": str}, **exact) if cs.is_file() else None,
                       gene_spearman=pd.read_csv(gs, **exact) if gs.is_file() else None,
                       skipped_cases=hist.get("skipped_cases", []))
