"""What an output folder holds, read for the report: training runs, predicted cases, their slides.

Only files the stages wrote are read (no model is run):

- training runs ``<out>/train/<run>/`` with ``config.json``: their ``metrics.json``, ``predictions.csv``
  (validation risks per fold) and figures (``km.png``, ``spearman.png``, ``learning_curves.png``);
- the genomics options ``<out>/genomics/config.json``;
- predicted cases ``<out>/predict/<case_id>.json`` and, per slide, the patch scores that ``predict
  --heatmaps`` wrote as QuPath GeoJSON (``heatmaps/<case>/<slide>.geojson``), the patch grid
  ``<out>/segment/<slide>.coords.h5`` and the tissue outline ``<out>/segment/<slide>.geojson``.

A slide file is found from the case record's ``slide_paths`` (written by ``predict``) or from the
``slide_paths`` given by the caller (``ghanet report --manifest`` / slide arguments), which win.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.ids import safe_child

#: figures of a training run shown in the report, in this order
RUN_FIGURES = ("km", "spearman", "learning_curves")


@dataclass
class TrainRun:
    """One training run: ``config`` (its config.json), ``metrics`` ({} before any fold finished),
    ``predictions`` (rows of predictions.csv as dicts), ``figures`` (name -> existing PNG)."""

    name: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.config.get("model") or self.metrics.get("model") or self.name)


@dataclass
class SlideSource:
    """Where the report finds one predicted slide's pixels and scores (None = not there)."""

    slide_id: str
    case_id: str
    path: Path | None
    mpp: float | None
    scores: Path | None
    coords: Path | None
    tissue: Path | None


@dataclass
class RunFolder:
    """Everything the report shows from one output root."""

    out: Path
    runs: list[TrainRun]
    genomics: dict[str, Any] | None
    cases: list[dict[str, Any]]
    slides: list[SlideSource]
    #: the training run the predictions were made with (its name), when it is under ``<out>/train``
    predict_run: str | None = None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _read_csv(path: Path) -> list[dict[str, Any]]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_runs(out: Path) -> list[TrainRun]:
    """Training runs under ``<out>/train`` (folders with a config.json), G-HANet runs first, then by name."""
    root = Path(out) / "train"
    runs = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        cfg = _read_json(d / "config.json") if d.is_dir() and not d.name.startswith(".") else None
        if cfg is None:
            continue
        figures = {k: d / f"{k}.png" for k in RUN_FIGURES if (d / f"{k}.png").is_file()}
        runs.append(TrainRun(name=d.name, path=d, config=cfg, metrics=_read_json(d / "metrics.json") or {},
                             predictions=_read_csv(d / "predictions.csv"), figures=figures))
    runs.sort(key=lambda r: (r.model != "ghanet", r.name))
    return runs


def read_cases(out: Path) -> list[dict[str, Any]]:
    """Per-case prediction records of ``<out>/predict`` (sorted by case id); unreadable files are skipped."""
    from ..inference.records import read_record

    pred = Path(out) / "predict"
    records = [read_record(p) for p in sorted(pred.glob("*.json"))] if pred.is_dir() else []
    return sorted((r for r in records if r is not None), key=lambda r: str(r["case_id"]))


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def slide_sources(out: Path, cases: list[dict[str, Any]], slide_paths: Mapping[str, Path] | None = None,
                  slide_mpp: Mapping[str, float] | None = None) -> list[SlideSource]:
    """One :class:`SlideSource` per slide of every case that got a score (``done``), in case order."""
    out = Path(out)
    given = dict(slide_paths or {})
    mpps = dict(slide_mpp or {})
    found = []
    for rec in cases:
        if rec.get("status") != "done":
            continue
        case = str(rec["case_id"])
        recorded = rec.get("slide_paths") or {}
        for sid in rec.get("slide_ids") or []:
            try:
                path = given.get(sid) or (Path(recorded[sid]) if recorded.get(sid) else None)
                scores = _existing(safe_child(out, "predict", "heatmaps", case, f"{sid}.geojson"))
                coords = _existing(safe_child(out, "segment", f"{sid}.coords.h5"))
                tissue = _existing(safe_child(out, "segment", f"{sid}.geojson"))
            except InputError:
                continue  # an id that is not a safe file name was never written by predict
            found.append(SlideSource(slide_id=sid, case_id=case, path=path, mpp=mpps.get(sid), scores=scores,
                                     coords=coords, tissue=tissue))
    return found


def gather(out: Path | str, slide_paths: Mapping[str, Path] | None = None,
           slide_mpp: Mapping[str, float] | None = None) -> RunFolder:
    """Read the report's inputs from ``out`` (see the module docstring)."""
    out = Path(out)
    runs = read_runs(out)
    cases = read_cases(out)
    predict_run = None
    models = {str(r.get("model", "")).split("#")[0] for r in cases}
    for run in runs:
        if str(run.path.resolve()) in models:
            predict_run = run.name
    genomics = _read_json(out / "genomics" / "config.json")
    return RunFolder(out=out, runs=runs, genomics=genomics, cases=cases,
                     slides=slide_sources(out, cases, slide_paths, slide_mpp), predict_run=predict_run)


def option_rows(values: Mapping[str, Any], sources: Mapping[str, str], defaults: Mapping[str, Any],
                skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows ``{option, value, source}`` for a stage's recorded options.

    ``source`` is the recorded one (``option_sources``: explicit, preset, protocol, default) where the
    stage recorded it, else ``default`` when the value equals the library default and ``set (default:
    x)`` when it differs (given on the command line or in a --config file)."""
    rows = []
    for key, value in values.items():
        if key in skip or key == "option_sources":
            continue
        if key in sources:
            src = str(sources[key])
        elif key in defaults:
            src = "default" if defaults[key] == value else f"set (default: {_plain(defaults[key])})"
        else:
            src = ""
        rows.append({"option": key, "value": _plain(value), "source": src})
    return rows


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of a dataclass (fields with a default factory are called)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)
