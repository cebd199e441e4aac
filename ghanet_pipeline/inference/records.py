"""Prediction options and results: `PredictConfig`, the per-case record (`CasePrediction`, written as
JSON) and the run's `predictions.csv`."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..ioutils import atomic_path
from ..runs import ItemResult
from .loading import Ensemble

log = logging.getLogger(__name__)


#: version of the per-case JSON written here
PREDICTION_SCHEMA = 1


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


def model_identity(ens: Ensemble) -> str:
    return f"{Path(ens.run_dir).resolve()}#folds={','.join(map(str, ens.folds))}"


def existing_rows(path: Path, model: str, overwrite: bool) -> list[dict[str, str]]:
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


def write_predictions_csv(path: Path, cases: list[CasePrediction], model: str, n_bins: int, overwrite: bool) -> None:
    """Write ``predictions.csv``; rows of other cases from an earlier run of the same model are kept."""
    new_rows = [c.row(model, n_bins) for c in cases]
    fields = list(new_rows[0]) if new_rows else ["case_id"]
    kept: list[dict[str, str]] = []
    old = existing_rows(path, model, overwrite)
    if old:
        done = {c.case_id for c in cases}
        kept = [r for r in old if r.get("case_id") not in done and list(r) == fields]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(kept + new_rows)
