"""Prediction options and results: `PredictConfig`, the per-case record (`CasePrediction`, written as
JSON) and the run's `predictions.csv`."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, MismatchError
from ..core.files import atomic_path, remove_stale_temps
from ..core.fingerprints import describe_differences, fingerprint_digest, from_json, to_json
from ..core.locks import OutputLocks
from ..core.runs import ItemResult
from ..models.checkpoint import checkpoint_fingerprint
from .loading import Ensemble

log = logging.getLogger(__name__)


#: version of the per-case JSON written here
PREDICTION_SCHEMA = 1


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
    #: slide_id -> absolute path of the slide file read (the report's viewer shows it); not for bags
    slide_paths: dict[str, str] = field(default_factory=dict)
    #: taken from an earlier run's JSON (not written to the record)
    reused: bool = field(default=False, repr=False, compare=False)

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
        return ItemResult(item=self.case_id, status="skipped" if self.reused and self.ok else self.status,
                          seconds=0.0 if self.reused else self.seconds.get("total", 0.0),
                          message="reused: same model and input files" if self.reused else self.message,
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


def model_fingerprint(ens: Ensemble) -> dict[str, Any]:
    """The provenance fingerprint of the ensemble's fold checkpoints (weights hashes, encoder, training
    inputs; :func:`ghanet_pipeline.models.checkpoint.checkpoint_fingerprint`) as JSON, with its ``digest``."""
    fp = checkpoint_fingerprint([m.path for m in ens.members])
    return {"digest": fingerprint_digest(fp), "components": to_json(fp)}


def input_signature(files: Sequence[Path], content_hash: bool = False) -> list[dict[str, Any]]:
    """Name and size (bytes) of each input file of a case, plus its sha256 with ``content_hash`` (bags,
    which may be rewritten with the same size) or else its modification time in ns (slides: too large
    to hash on every run)."""
    from ..core.files import file_sha256

    out = []
    for f in files:
        entry: dict[str, Any] = {"name": Path(f).name, "bytes": None}
        try:
            st = Path(f).stat()
            entry["bytes"] = st.st_size
            if content_hash:
                entry["sha256"] = file_sha256(f)
            else:
                entry["mtime_ns"] = st.st_mtime_ns
        except OSError:
            pass
        out.append(entry)
    return out


def case_record(pred: CasePrediction, ens: Ensemble, model_fp: dict[str, Any], inputs: list[dict[str, Any]]
                ) -> dict[str, Any]:
    """The per-case JSON (``<out>/predict/<case_id>.json``)."""
    record = {"schema_version": PREDICTION_SCHEMA, "model": model_identity(ens), "model_fingerprint": model_fp,
              "model_name": ens.model_name, "folds": ens.folds, "encoder": ens.encoder, "inputs": inputs,
              "threshold_rule": "high if mean fold risk > mean of the folds' training median risks", **asdict(pred)}
    del record["reused"]
    record["risk_per_fold"] = {str(k): v for k, v in pred.risk_per_fold.items()}
    return record


def prediction_from_record(record: Mapping[str, Any]) -> CasePrediction:
    """Rebuild a :class:`CasePrediction` from its JSON record."""
    names = {f.name for f in fields(CasePrediction)}
    pred = CasePrediction(**{k: v for k, v in record.items() if k in names})
    pred.risk_per_fold = {int(k): float(v) for k, v in (record.get("risk_per_fold") or {}).items()}
    return pred


def read_record(path: Path) -> dict[str, Any] | None:
    """A per-case JSON record, or None when missing, unreadable or of another schema."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("schema_version") != PREDICTION_SCHEMA or "case_id" not in record:
        return None
    return record


#: :func:`reuse_refusal` of a case predicted for the first time
NO_EARLIER_RESULT = "no earlier result"


def reuse_refusal(record: dict[str, Any] | None, ens: Ensemble, model_fp: dict[str, Any], slide_ids: list[str],
                  inputs: list[dict[str, Any]], heatmaps: bool) -> str | None:
    """Why an earlier per-case record cannot be reused for this run, phrased to follow "its earlier
    result was ..." (:data:`NO_EARLIER_RESULT` when there is none); None when it can be reused.

    Reused when it is a finished case (``done``/``no tissue``) of the same model (run path, folds and
    the same :func:`model_fingerprint`: every fold's weights hash, encoder and training inputs), with the
    same slides (names and sizes of the input files) and, when heatmaps are asked for, with its heatmap
    files present.
    """
    if record is None:
        return NO_EARLIER_RESULT
    if record.get("status") not in ("done", "no tissue"):
        return f"of status {record.get('status')}"
    if record.get("model") != model_identity(ens):
        return "made by another model"
    old = (record.get("model_fingerprint") or {})
    if old.get("digest") != model_fp["digest"]:
        try:
            changed = describe_differences(from_json(old.get("components")), from_json(model_fp["components"]))
        except MismatchError:
            changed = ["unreadable fingerprint"]
        return "made before the model changed (" + "; ".join(changed) + ")"
    if record.get("slide_ids") != slide_ids or record.get("inputs") != inputs:
        return "made from other input files"
    if heatmaps and record.get("status") == "done" and (
            not record.get("heatmaps") or not all(Path(p).is_file() for p in record["heatmaps"])):
        return "made without heatmaps"
    return None


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


def rebuild_predictions_csv(out_dir: Path, model: str) -> list[CasePrediction]:
    """Rewrite ``<out_dir>/predictions.csv`` from every per-case JSON of ``model`` in ``out_dir``.

    Rows are sorted by case id. Held under the output's exclusive lock (``<out>/.locks/predict/output.lock``,
    :class:`~ghanet_pipeline.core.locks.OutputLocks`) so that several ``predict`` processes writing into one
    ``--out`` (shards, two terminals) never lose a row: each rebuild reads every finished case, whoever
    computed it. Returns the cases written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with OutputLocks(out_dir.parent, out_dir.name).exclusive():
        preds, n_bins = [], 0
        for path in sorted(out_dir.glob("*.json")):
            record = read_record(path)
            if record is None or record.get("model") != model or path.stem != record["case_id"]:
                continue
            pred = prediction_from_record(record)
            preds.append(pred)
            if pred.bin_edges_months:
                n_bins = max(n_bins, len(pred.bin_edges_months) - 1)
        preds.sort(key=lambda p: p.case_id)
        rows = [p.row(model, n_bins) for p in preds]
        names = list(rows[0]) if rows else ["case_id"]
        remove_stale_temps(out_dir, ["predictions.csv"])  # a killed rebuild's half-written table (never a live one's)
        with atomic_path(out_dir / "predictions.csv") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=names)
                w.writeheader()
                w.writerows(rows)
    return preds
