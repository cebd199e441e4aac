"""One fold: the epoch loop (forward, NLL + reconstruction loss, accumulation, Adam), validation and
the fold's outputs."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.errors import InputError, MismatchError
from ..core.files import atomic_path, write_json_atomic
from ..env.device import resolve_device
from ..env.runtime import tune_malloc
from .config import ProgressFn, TrainConfig, TrainingError, noop_progress
from .data import CaseBags, balanced_order, subsample_patches, to_tensor
from .state import FoldOutcome, load_state, make_optimizer, save_state

log = logging.getLogger(__name__)


def _case_loss(model, out: Mapping[str, Any], label: Mapping[str, Any], targets, alpha: float, alpha_surv: float,
               device):
    """(total, nll, recon) losses of one case; ``targets`` is a list of per-family tensors or None."""
    import torch
    import torch.nn.functional as F

    from ..models.survival import nll_loss, sce_loss

    y = torch.tensor([int(label["bin"])], dtype=torch.long, device=device)
    c = torch.tensor([float(label["censorship"])], dtype=torch.float32, device=device)
    nll = nll_loss(out["hazards"], out["S"], y, c, alpha=alpha_surv)
    recon = torch.zeros((), device=device)
    if targets is not None and out.get("recon") is not None:
        for pred, tgt in zip(out["recon"], targets, strict=False):
            if pred is None or tgt is None or tgt.numel() == 0:
                continue
            p = pred.reshape(-1)
            recon = recon + F.mse_loss(p, tgt) + sce_loss(p.unsqueeze(0), tgt.unsqueeze(0))
    return nll + alpha * recon, nll, recon


def _check_floor_topk(fold: int, train_ids: Sequence[str], val_ids: Sequence[str], n_patches: Mapping[str, int],
                      config: TrainConfig) -> None:
    """The official top-k rule int(N * topk) selects nothing for small bags: name them before training."""
    from ..models import topk_count

    small = []
    for c, ids_max in [(c, config.max_patches) for c in train_ids] + [(c, None) for c in val_ids]:
        n = n_patches.get(c)
        if n is not None and topk_count(min(n, ids_max or n), config.topk, "floor") < 1:
            small.append(f"{c} ({min(n, ids_max or n)} patches)")
    if small:
        raise InputError(f"fold {fold}: the official top-k rule int(N x {config.topk:g}) selects no patch for "
                         f"{len(small)} case(s): {', '.join(small[:10])}{' ...' if len(small) > 10 else ''}; "
                         f"use --topk-rule ceil (protocol ghanet: at least one patch), a larger --topk or "
                         f"--max-patches, or leave these cases out")


def train_fold(fold: int, fold_data: Any, bags: CaseBags, config: TrainConfig, fold_dir: Path,
               encoder: Mapping[str, Any], progress: ProgressFn = noop_progress, c_hash: str = "",
               fp_digest: str = "") -> FoldOutcome:
    """Train one fold (resuming from ``fold_dir/state`` when present) and write its outputs.

    ``c_hash`` (options) and ``fp_digest`` (inputs fingerprint) are stored in the state and checkpoint.
    """
    import pandas as pd
    import torch

    from ..evaluation.metrics import NoComparablePairsError, concordance_index, spearman
    from ..models import create_model, save_checkpoint

    device = resolve_device(config.device)
    if device.type == "cpu":   # per-step N x dim tensors reused instead of page-faulted back every step
        tune_malloc()
    have = set(bags.cases())
    train_ids = [c for c in fold_data.train_ids if c in have]
    val_ids = [c for c in fold_data.val_ids if c in have]
    skipped = [c for c in list(fold_data.train_ids) + list(fold_data.val_ids) if c not in have]
    if skipped:
        log.warning("fold %d: %d case(s) without a bag are skipped: %s%s", fold, len(skipped),
                    ", ".join(skipped[:20]), " ..." if len(skipped) > 20 else "")
    for name, ids, total in (("training", train_ids, fold_data.train_ids), ("validation", val_ids, fold_data.val_ids)):
        if not ids:
            raise InputError(f"fold {fold}: none of the {len(total)} {name} cases has a bag in --features; "
                             f"check the case -> slide mapping (--manifest, --case-id-from tcga) or extract "
                             f"features for those slides")
    if config.model == "ghanet" and config.topk_rule == "floor":
        _check_floor_topk(fold, train_ids, val_ids, getattr(bags, "n_patches", {}), config)
    labels = fold_data.labels
    families = list(fold_data.families)
    family_sizes = [len(fold_data.selected.get(f, [])) for f in families]

    model_kwargs: dict[str, Any] = dict(in_dim=bags.dim, n_bins=4, dim=config.dim, dropout=config.dropout)
    if config.model == "ghanet":
        model_kwargs.update(family_sizes=family_sizes, heads=config.heads, topk=config.topk,
                            topk_rule=config.topk_rule)
    torch.manual_seed(config.seed * 1000 + fold)
    model = create_model(config.model, **model_kwargs).to(device)
    needs_genomics = bool(getattr(model, "needs_genomics", False))
    targets: dict[str, list[Any]] = {}
    if needs_genomics:
        missing_t = [c for c in train_ids + val_ids if c not in fold_data.targets]
        if missing_t:
            raise MismatchError(f"fold {fold}: genomics targets.h5 has no targets for {len(missing_t)} case(s) with "
                                f"bags (e.g. {', '.join(missing_t[:5])}); targets and bags are for different case "
                                f"sets — rerun preprocess-genomics on the table that lists these cases")
        for c in train_ids + val_ids:
            targets[c] = [to_tensor(np.asarray(t, dtype=np.float32), device) if len(t) else None
                          for t in fold_data.targets[c]]

    lab = labels.loc[train_ids]
    lab_bins = lab["bin"].to_numpy(dtype=np.int64)
    lab_cens = lab["censorship"].to_numpy(dtype=np.int64)
    train_labels = {c: {"bin": int(b), "censorship": int(s)} for c, b, s in zip(train_ids, lab_bins, lab_cens, strict=False)}

    opt = make_optimizer(model, config.lr, config.weight_decay)
    state_dir = fold_dir / "state"
    history: list[dict[str, Any]] = []
    best_state: dict[str, Any] | None = None
    best_c, best_epoch = -math.inf, 0
    start_epoch = 0
    loaded = load_state(state_dir, model, opt, c_hash, fp_digest, fold)
    if loaded is not None:
        info, best_state = loaded
        start_epoch = int(info["epoch"])
        history = list(info["history"])
        best_c = -math.inf if info.get("best_c") is None else float(info["best_c"])
        best_epoch = int(info.get("best_epoch", 0))
        log.info("fold %d: resuming after epoch %d", fold, start_epoch)
        progress("resume", fold=fold, epoch=start_epoch)

    val_time = labels.loc[val_ids, "survival_months"].to_numpy(dtype=float)
    val_event = 1 - labels.loc[val_ids, "censorship"].to_numpy(dtype=int)

    def predict(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[Any], list[float]]:
        model.eval()
        risks, surv, recons, losses = [], [], [], []
        with torch.no_grad():
            for c in ids:
                out = model(to_tensor(bags.features(c), device))
                risk = float(out["risk"].reshape(-1)[0])
                if not math.isfinite(risk):
                    raise TrainingError(f"fold {fold}: the model gives a NaN/inf risk for case {c!r} (after epoch "
                                        f"{len(history)}); check that case's bag for NaN/inf features, or lower --lr")
                risks.append(risk)
                surv.append(out["S"].reshape(-1).cpu().numpy())
                recons.append([None if r is None else r.reshape(-1).cpu().numpy() for r in out.get("recon") or []])
                row = labels.loc[c]
                total, _, _ = _case_loss(model, out, {"bin": row["bin"], "censorship": row["censorship"]},
                                         targets.get(c), config.alpha, config.alpha_surv, device)
                losses.append(float(total))
        return np.asarray(risks), np.stack(surv) if surv else np.zeros((0, 4)), recons, losses

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        order = balanced_order(lab_bins, lab_cens, config.seed, fold, epoch)
        rng = np.random.default_rng([config.seed, fold, epoch, 2])
        carry = config.accumulation == "carry-over"   # official: last epoch's partial sum is kept
        if not carry:
            opt.zero_grad(set_to_none=True)
        sums = {"total": 0.0, "nll": 0.0, "recon": 0.0}
        for step, idx in enumerate(order):
            case = train_ids[idx]
            feats = subsample_patches(bags.features(case), config.max_patches, rng)
            out = model(to_tensor(feats, device))
            total, nll, recon = _case_loss(model, out, train_labels[case], targets.get(case), config.alpha,
                                           config.alpha_surv, device)
            if not torch.isfinite(total):
                raise TrainingError(
                    f"fold {fold}, epoch {epoch + 1}: the loss became NaN/inf ({float(total.detach())}) on case "
                    f"{case!r} (NLL {float(nll.detach()):.4g}, reconstruction {float(recon.detach()):.4g}); "
                    f"check that case's bag for NaN/inf features, or lower --lr")
            (total / config.accum).backward()
            sums["total"] += float(total.detach())
            sums["nll"] += float(nll.detach())
            sums["recon"] += float(recon.detach())
            if (step + 1) % config.accum == 0 or (not carry and step + 1 == len(order)):
                opt.step()
                opt.zero_grad(set_to_none=True)
        n = len(order)
        risks, _, _, vlosses = predict(val_ids)
        try:
            vc: float | None = concordance_index(val_time, val_event, risks, what=f"fold {fold} validation")
        except NoComparablePairsError:
            vc = None
        rec = {"epoch": epoch + 1, "train_loss": sums["total"] / n, "train_nll": sums["nll"] / n,
               "train_recon": sums["recon"] / n, "val_loss": float(np.mean(vlosses)), "val_c_index": vc,
               "seconds": round(time.perf_counter() - t0, 3)}
        history.append(rec)
        if config.select == "best-epoch" and vc is not None and vc > best_c:
            best_c, best_epoch = vc, epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        save_state(state_dir, model, opt, best_state if config.select == "best-epoch" else None,
                    {"epoch": epoch + 1, "history": history, "best_c": None if best_c == -math.inf else best_c,
                     "best_epoch": best_epoch, "config_hash": c_hash, "fingerprint_digest": fp_digest,
                    "fold": fold})
        progress("epoch", fold=fold, epochs=config.epochs, **rec)

    selected_epoch = config.epochs
    if config.select == "best-epoch":
        if best_state is None:
            log.warning("fold %d: no epoch had a defined validation c-index; reporting the final epoch", fold)
        else:
            model.load_state_dict(best_state)
            selected_epoch = best_epoch

    # --- final predictions, training-risk median, reconstruction quality ----------------------
    risks, surv, recons, _ = predict(val_ids)
    train_unique = list(dict.fromkeys(train_ids))
    train_risks, _, _, _ = predict(train_unique)
    train_median = float(np.median(train_risks))
    vlab = labels.loc[val_ids]
    pred = pd.DataFrame({"fold": fold, "case_id": val_ids, "risk": risks})
    for b in range(surv.shape[1]):
        pred[f"S_{b}"] = surv[:, b]
    pred["bin"] = vlab["bin"].to_numpy(dtype=int)
    pred["survival_months"] = vlab["survival_months"].to_numpy(dtype=float)
    pred["censorship"] = vlab["censorship"].to_numpy(dtype=int)

    case_sp = gene_sp = None
    if needs_genomics:
        rows_c, rows_g = [], []
        for fi, fam in enumerate(families):
            if family_sizes[fi] == 0:
                continue
            P = np.stack([r[fi] for r in recons])                      # (n_val, n_i)
            T = np.stack([np.asarray(fold_data.targets[c][fi], dtype=np.float32) for c in val_ids])
            for c, p, t in zip(val_ids, P, T, strict=False):
                rows_c.append({"case_id": c, "family": fam, "spearman": spearman(p, t)})
            for gi, gene in enumerate(fold_data.selected[fam]):
                rows_g.append({"family": fam, "gene": gene, "spearman": spearman(P[:, gi], T[:, gi]),
                               "n_cases": len(val_ids)})
        case_sp = pd.DataFrame(rows_c, columns=["case_id", "family", "spearman"])
        gene_sp = pd.DataFrame(rows_g, columns=["family", "gene", "spearman", "n_cases"])

    meta = {
        "checkpoint_version": 1, "ghanet_version": __version__, "model": config.model,
        "model_config": dict(getattr(model, "config", model_kwargs)), "families": families,
        "selected": {f: list(fold_data.selected.get(f, [])) for f in families},
        "scaler": getattr(fold_data, "scaler", None), "bin_edges_months": list(map(float, fold_data.bin_edges_months)),
        "encoder": dict(encoder), "segment_params": getattr(bags, "segment_params", None),
        "train_risk_median": train_median, "fold": fold, "epoch": selected_epoch,
        "select": config.select, "n_train_cases": len(train_unique), "n_val_cases": len(val_ids),
        "protocol": config.protocol, "preset": config.preset, "accumulation": config.accumulation,
        "config_hash": c_hash, "fingerprint_digest": fp_digest,
    }
    with atomic_path(fold_dir / "predictions.csv") as tmp:
        pred.to_csv(tmp, index=False)
    if case_sp is not None:
        with atomic_path(fold_dir / "case_spearman.csv") as tmp:
            case_sp.to_csv(tmp, index=False)
        with atomic_path(fold_dir / "gene_spearman.csv") as tmp:
            gene_sp.to_csv(tmp, index=False)
    save_checkpoint(fold_dir, model, meta)
    write_json_atomic(fold_dir / "history.json", {
        "fold": fold, "epochs": history, "selected_epoch": selected_epoch, "select": config.select,
        "skipped_cases": skipped, "complete": True})
    shutil.rmtree(state_dir, ignore_errors=True)
    return FoldOutcome(fold=fold, predictions=pred, history=history, selected_epoch=selected_epoch,
                       train_risk_median=train_median, case_spearman=case_sp, gene_spearman=gene_sp,
                       skipped_cases=skipped, resumed_from_epoch=start_epoch)
