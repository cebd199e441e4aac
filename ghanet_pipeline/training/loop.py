"""One fold: the epoch loop (forward, NLL + reconstruction loss, accumulation, Adam), validation and
the fold's outputs.

:func:`train_fold` runs the named steps; :class:`FoldTrainer` holds what they share (the model, its
optimiser, the fold's cases, labels and targets on the device) so that each step is a short method.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..core.errors import InputError, MismatchError
from ..core.files import atomic_path, write_json_atomic
from ..core.labels import event_from_censorship
from ..env.device import resolve_device
from ..env.runtime import tune_malloc
from ..genomics import FoldData
from .config import ProgressFn, TrainConfig, TrainingError, noop_progress
from .data import CaseBags, balanced_order, subsample_patches, to_tensor
from .state import FoldOutcome, load_state, make_optimizer, save_state

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

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


def fold_cases(fold: FoldData, bags: CaseBags) -> tuple[list[str], list[str], list[str]]:
    """(training ids, validation ids, skipped ids) of a fold: cases without a bag are skipped (warned);
    a split left without any case is an :class:`InputError`."""
    have = set(bags.cases())
    train_ids = [c for c in fold.train_ids if c in have]
    val_ids = [c for c in fold.val_ids if c in have]
    skipped = [c for c in list(fold.train_ids) + list(fold.val_ids) if c not in have]
    if skipped:
        log.warning("fold %d: %d case(s) without a bag are skipped: %s%s", fold.fold, len(skipped),
                    ", ".join(skipped[:20]), " ..." if len(skipped) > 20 else "")
    for name, ids, total in (("training", train_ids, fold.train_ids), ("validation", val_ids, fold.val_ids)):
        if not ids:
            raise InputError(f"fold {fold.fold}: none of the {len(total)} {name} cases has a bag in --features; "
                             f"check the case -> slide mapping (--manifest, --case-id-from tcga) or extract "
                             f"features for those slides")
    return train_ids, val_ids, skipped


def _as_float32(value: Any) -> Any:
    """A model output (tensor, list of tensors or None) as float32."""
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float32(v) for v in value)
    return value.float() if hasattr(value, "is_floating_point") and value.is_floating_point() else value


@dataclasses.dataclass
class Predictions:
    """A model's outputs on a list of cases: risk (N,), survival S (N, n_bins), per-family reconstructions
    (None per family without genes) and the loss of each case."""

    risks: np.ndarray
    surv: np.ndarray
    recons: list[list[np.ndarray | None]]
    losses: list[float]


@dataclasses.dataclass
class FoldTrainer:
    """The model of one fold with its optimiser, cases, labels and reconstruction targets (on the device)."""

    fold: FoldData
    bags: CaseBags
    config: TrainConfig
    train_ids: list[str]
    val_ids: list[str]
    device: Any = None
    model: Any = None
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    opt: Any = None
    targets: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_state: dict[str, Any] | None = None
    best_c: float = -math.inf
    best_epoch: int = 0
    start_epoch: int = 0

    def forward(self, feats: Any) -> dict[str, Any]:
        """The model on one training bag: under bf16 autocast when ``config.precision`` is bf16 (matrix
        products take bf16 inputs), outputs returned as float32 so that the losses are computed in float32.
        Validation and prediction passes (:meth:`predict`) run in float32, as ``ghanet predict`` does."""
        import torch

        x = to_tensor(feats, self.device)
        if self.config.precision != "bf16":
            return self.model(x)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            out = self.model(x)
        return {k: _as_float32(v) for k, v in out.items()}

    @property
    def needs_genomics(self) -> bool:
        return bool(getattr(self.model, "needs_genomics", False))

    def build(self) -> None:
        """Model (seeded by seed and fold), the cases' targets on the device, then the optimiser."""
        import torch

        from ..models import create_model

        cfg, fold = self.config, self.fold
        self.device = resolve_device(cfg.device)
        self.model_kwargs = dict(in_dim=self.bags.dim, n_bins=len(fold.bin_edges_months) - 1, dim=cfg.dim,
                                 dropout=cfg.dropout)
        if cfg.model == "ghanet":
            self.model_kwargs.update(family_sizes=fold.family_sizes, heads=cfg.heads, topk=cfg.topk,
                                     topk_rule=cfg.topk_rule)
        torch.manual_seed(cfg.seed * 1000 + fold.fold)
        self.model = create_model(cfg.model, **self.model_kwargs).to(self.device)
        if self.needs_genomics:
            self._load_targets()
        self.opt = make_optimizer(self.model, cfg.lr, cfg.weight_decay)

    def _load_targets(self) -> None:
        ids = self.train_ids + self.val_ids
        missing = [c for c in ids if c not in self.fold.targets]
        if missing:
            raise MismatchError(f"fold {self.fold.fold}: genomics targets.h5 has no targets for {len(missing)} "
                                f"case(s) with bags (e.g. {', '.join(missing[:5])}); targets and bags are for "
                                f"different case sets — rerun preprocess-genomics on the table that lists these cases")
        for c in ids:
            self.targets[c] = [to_tensor(np.asarray(t, dtype=np.float32), self.device) if len(t) else None
                               for t in self.fold.targets[c]]

    def resume(self, state_dir: Path, c_hash: str, fp_digest: str, progress: ProgressFn) -> None:
        """Continue from ``state_dir`` when it holds a state of this fold, options and inputs."""
        loaded = load_state(state_dir, self.model, self.opt, c_hash, fp_digest, self.fold.fold)
        if loaded is None:
            return
        info, self.best_state = loaded
        self.start_epoch = int(info["epoch"])
        self.history = list(info["history"])
        self.best_c = -math.inf if info.get("best_c") is None else float(info["best_c"])
        self.best_epoch = int(info.get("best_epoch", 0))
        log.info("fold %d: resuming after epoch %d", self.fold.fold, self.start_epoch)
        progress("resume", fold=self.fold.fold, epoch=self.start_epoch)

    def _label(self, case: str) -> dict[str, int]:
        row = self.fold.labels.loc[case]
        return {"bin": int(row["bin"]), "censorship": int(row["censorship"])}

    def predict(self, ids: Sequence[str]) -> Predictions:
        """Risks, survival, reconstructions and losses of ``ids`` in eval mode (no gradient)."""
        import torch

        self.model.eval()
        out_p = Predictions(np.zeros(0), np.zeros((0, 0)), [], [])
        risks, surv = [], []
        with torch.no_grad():
            for c in ids:
                out = self.model(to_tensor(self.bags.features(c), self.device))
                risk = float(out["risk"].reshape(-1)[0])
                if not math.isfinite(risk):
                    raise TrainingError(f"fold {self.fold.fold}: the model gives a NaN/inf risk for case {c!r} "
                                        f"(after epoch {len(self.history)}); check that case's bag for NaN/inf "
                                        f"features, or lower --lr")
                risks.append(risk)
                surv.append(out["S"].reshape(-1).cpu().numpy())
                out_p.recons.append([None if r is None else r.reshape(-1).cpu().numpy()
                                     for r in out.get("recon") or []])
                total, _, _ = _case_loss(self.model, out, self._label(c), self.targets.get(c), self.config.alpha,
                                         self.config.alpha_surv, self.device)
                out_p.losses.append(float(total))
        out_p.risks = np.asarray(risks)
        out_p.surv = np.stack(surv) if surv else np.zeros((0, len(self.fold.bin_edges_months) - 1))
        return out_p

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over a class-balanced draw of the training cases; mean losses per case."""
        import torch

        cfg = self.config
        lab = self.fold.labels.loc[self.train_ids]
        order = balanced_order(lab["bin"].to_numpy(dtype=np.int64), lab["censorship"].to_numpy(dtype=np.int64),
                               cfg.seed, self.fold.fold, epoch)
        rng = np.random.default_rng([cfg.seed, self.fold.fold, epoch, 2])
        carry = cfg.accumulation == "carry-over"   # official: last epoch's partial sum is kept
        self.model.train()
        if not carry:
            self.opt.zero_grad(set_to_none=True)
        sums = {"total": 0.0, "nll": 0.0, "recon": 0.0}
        for step, idx in enumerate(order):
            case = self.train_ids[idx]
            feats = subsample_patches(self.bags.features(case), cfg.max_patches, rng)
            out = self.forward(feats)
            total, nll, recon = _case_loss(self.model, out, self._label(case), self.targets.get(case), cfg.alpha,
                                           cfg.alpha_surv, self.device)
            if not torch.isfinite(total):
                raise TrainingError(
                    f"fold {self.fold.fold}, epoch {epoch + 1}: the loss became NaN/inf ({float(total.detach())}) on "
                    f"case {case!r} (NLL {float(nll.detach()):.4g}, reconstruction {float(recon.detach()):.4g}); "
                    f"check that case's bag for NaN/inf features, or lower --lr")
            (total / cfg.accum).backward()
            for key, value in (("total", total), ("nll", nll), ("recon", recon)):
                sums[key] += float(value.detach())
            if (step + 1) % cfg.accum == 0 or (not carry and step + 1 == len(order)):
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        return {k: v / len(order) for k, v in sums.items()}

    def validate(self, epoch: int, losses: Mapping[str, float], seconds: float) -> dict[str, Any]:
        """The epoch's history record: training losses, validation loss and c-index (None when undefined)."""
        from ..evaluation.metrics import NoComparablePairsError, concordance_index

        val = self.predict(self.val_ids)
        labels = self.fold.labels.loc[self.val_ids]
        try:
            vc: float | None = concordance_index(labels["survival_months"].to_numpy(dtype=float),
                                                 event_from_censorship(labels["censorship"]), val.risks,
                                                 what=f"fold {self.fold.fold} validation")
        except NoComparablePairsError:
            vc = None
        return {"epoch": epoch + 1, "train_loss": losses["total"], "train_nll": losses["nll"],
                "train_recon": losses["recon"], "val_loss": float(np.mean(val.losses)), "val_c_index": vc,
                "seconds": round(seconds, 3)}

    def record_epoch(self, rec: dict[str, Any], state_dir: Path, c_hash: str, fp_digest: str) -> None:
        """Keep the epoch in the history (and as the best one, for ``--select best-epoch``); save the state."""
        self.history.append(rec)
        best = self.config.select == "best-epoch"
        if best and rec["val_c_index"] is not None and rec["val_c_index"] > self.best_c:
            self.best_c, self.best_epoch = rec["val_c_index"], rec["epoch"]
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        save_state(state_dir, self.model, self.opt, self.best_state if best else None,
                   {"epoch": rec["epoch"], "history": self.history,
                    "best_c": None if self.best_c == -math.inf else self.best_c, "best_epoch": self.best_epoch,
                    "config_hash": c_hash, "fingerprint_digest": fp_digest, "fold": self.fold.fold})

    def select_epoch(self) -> int:
        """Load the reported epoch's weights (the best one for ``--select best-epoch``); its number."""
        if self.config.select != "best-epoch":
            return self.config.epochs
        if self.best_state is None:
            log.warning("fold %d: no epoch had a defined validation c-index; reporting the final epoch",
                        self.fold.fold)
            return self.config.epochs
        self.model.load_state_dict(self.best_state)
        return self.best_epoch


def validation_table(fold: FoldData, val_ids: Sequence[str], val: Predictions) -> pd.DataFrame:
    """``predictions.csv`` of a fold: fold, case_id, risk, S_<b>, bin, survival_months, censorship."""
    import pandas as pd

    vlab = fold.labels.loc[list(val_ids)]
    pred = pd.DataFrame({"fold": fold.fold, "case_id": list(val_ids), "risk": val.risks})
    for b in range(val.surv.shape[1]):
        pred[f"S_{b}"] = val.surv[:, b]
    pred["bin"] = vlab["bin"].to_numpy(dtype=int)
    pred["survival_months"] = vlab["survival_months"].to_numpy(dtype=float)
    pred["censorship"] = vlab["censorship"].to_numpy(dtype=int)
    return pred


def reconstruction_tables(fold: FoldData, val_ids: Sequence[str], val: Predictions
                          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spearman of predicted vs true gene targets on the validation cases: per case and family
    (``case_spearman.csv``) and per gene across cases (``gene_spearman.csv``)."""
    import pandas as pd

    from ..evaluation.metrics import spearman

    rows_c, rows_g = [], []
    for fi, fam in enumerate(fold.families):
        if fold.family_sizes[fi] == 0:
            continue
        pred = np.stack([r[fi] for r in val.recons])                      # (n_val, n_i)
        true = np.stack([np.asarray(fold.targets[c][fi], dtype=np.float32) for c in val_ids])
        rows_c += [{"case_id": c, "family": fam, "spearman": spearman(p, t)}
                   for c, p, t in zip(val_ids, pred, true, strict=False)]
        rows_g += [{"family": fam, "gene": gene, "spearman": spearman(pred[:, gi], true[:, gi]),
                    "n_cases": len(val_ids)} for gi, gene in enumerate(fold.selected[fam])]
    return (pd.DataFrame(rows_c, columns=["case_id", "family", "spearman"]),
            pd.DataFrame(rows_g, columns=["family", "gene", "spearman", "n_cases"]))


def _checkpoint_meta(trainer: FoldTrainer, encoder: Mapping[str, Any], selected_epoch: int, train_median: float,
                     n_train: int, c_hash: str, fp_digest: str) -> dict[str, Any]:
    fold, cfg = trainer.fold, trainer.config
    return {
        "checkpoint_version": 1, "ghanet_version": __version__, "model": cfg.model,
        "model_config": dict(getattr(trainer.model, "config", trainer.model_kwargs)), "families": fold.families,
        "selected": {f: list(fold.selected.get(f, [])) for f in fold.families},
        "scaler": fold.scaler, "bin_edges_months": list(map(float, fold.bin_edges_months)),
        "encoder": dict(encoder), "segment_params": getattr(trainer.bags, "segment_params", None),
        "train_risk_median": train_median, "fold": fold.fold, "epoch": selected_epoch,
        "select": cfg.select, "n_train_cases": n_train, "n_val_cases": len(trainer.val_ids),
        "protocol": cfg.protocol, "preset": cfg.preset, "accumulation": cfg.accumulation,
        "train_precision": cfg.precision,
        "config_hash": c_hash, "fingerprint_digest": fp_digest,
    }


def _write_tables(fold_dir: Path, tables: Mapping[str, pd.DataFrame | None]) -> None:
    for name, table in tables.items():
        if table is not None:
            with atomic_path(fold_dir / name) as tmp:
                table.to_csv(tmp, index=False)


def train_fold(fold: int, fold_data: FoldData, bags: CaseBags, config: TrainConfig, fold_dir: Path,
               encoder: Mapping[str, Any], progress: ProgressFn = noop_progress, c_hash: str = "",
               fp_digest: str = "") -> FoldOutcome:
    """Train fold ``fold`` (resuming from ``fold_dir/state`` when present) and write its outputs:
    ``predictions.csv``, ``case_spearman.csv`` / ``gene_spearman.csv`` (G-HANet), the checkpoint and
    ``history.json``. ``c_hash`` (options) and ``fp_digest`` (inputs fingerprint) are stored in the state
    and checkpoint."""
    from ..models import save_checkpoint

    if fold_data.fold != fold:
        fold_data = dataclasses.replace(fold_data, fold=fold)
    if resolve_device(config.device).type == "cpu":  # per-step N x dim tensors reused, not page-faulted back
        tune_malloc()
    train_ids, val_ids, skipped = fold_cases(fold_data, bags)
    if config.model == "ghanet" and config.topk_rule == "floor":
        _check_floor_topk(fold, train_ids, val_ids, getattr(bags, "n_patches", {}), config)
    trainer = FoldTrainer(fold_data, bags, config, train_ids, val_ids)
    trainer.build()
    state_dir = fold_dir / "state"
    trainer.resume(state_dir, c_hash, fp_digest, progress)
    for epoch in range(trainer.start_epoch, config.epochs):
        t0 = time.perf_counter()
        losses = trainer.train_epoch(epoch)
        rec = trainer.validate(epoch, losses, time.perf_counter() - t0)
        trainer.record_epoch(rec, state_dir, c_hash, fp_digest)
        progress("epoch", fold=fold, epochs=config.epochs, **rec)

    selected_epoch = trainer.select_epoch()
    val = trainer.predict(val_ids)
    train_unique = list(dict.fromkeys(train_ids))
    train_median = float(np.median(trainer.predict(train_unique).risks))
    pred = validation_table(fold_data, val_ids, val)
    case_sp, gene_sp = reconstruction_tables(fold_data, val_ids, val) if trainer.needs_genomics else (None, None)
    _write_tables(fold_dir, {"predictions.csv": pred, "case_spearman.csv": case_sp, "gene_spearman.csv": gene_sp})
    save_checkpoint(fold_dir, trainer.model, _checkpoint_meta(trainer, encoder, selected_epoch, train_median,
                                                              len(train_unique), c_hash, fp_digest))
    write_json_atomic(fold_dir / "history.json", {
        "fold": fold, "epochs": trainer.history, "selected_epoch": selected_epoch, "select": config.select,
        "skipped_cases": skipped, "complete": True})
    shutil.rmtree(state_dir, ignore_errors=True)
    return FoldOutcome(fold=fold, predictions=pred, history=trainer.history, selected_epoch=selected_epoch,
                       train_risk_median=train_median, case_spearman=case_sp, gene_spearman=gene_sp,
                       skipped_cases=skipped, resumed_from_epoch=trainer.start_epoch)
