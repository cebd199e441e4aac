"""The values of the report's index page: what was run, results per training run, the case table.

Numbers come from the run's own files (``metrics.json``: c-index per fold, mean, std, pooled,
log-rank p, gene reconstruction); the report adds 95 % bootstrap intervals of the c-index
(``stats.py``) computed from the run's ``predictions.csv``. Validation cases are grouped as the run's
Kaplan-Meier plot groups them: high when the risk is above that fold's threshold
(``metrics.json`` ``risk_thresholds``: the fold's training median risk).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .gather import RunFolder, TrainRun, dataclass_defaults, option_rows
from .pages import url
from .slidepage import SlidePage
from .stats import N_BOOT, Interval, cindex_interval

#: config.json keys that are bookkeeping, not options
NOT_OPTIONS = ("fingerprint", "fingerprint_digest", "config_hash", "encoder", "option_sources", "ghanet_version",
               "torch", "n_cases_with_bags", "genomics_protocol", "folds")
FIGURE_CAPTIONS = {
    "km": "Kaplan-Meier curves of the validation cases by predicted risk group, 95 % bands, numbers at risk below",
    "spearman": "Gene reconstruction: Spearman correlation per gene across validation cases (left) and per case "
                "across genes (right)",
    "learning_curves": "Learning curves per fold (loss, validation c-index; the star marks the reported epoch)",
}


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def _validation(rows: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[int], list[float]]:
    """(time months, event 1 = death, risk) of prediction rows with all three."""
    t, e, r = [], [], []
    for row in rows:
        tm, cz, rk = _float(row.get("survival_months")), _float(row.get("censorship")), _float(row.get("risk"))
        if tm is not None and cz is not None and rk is not None:
            t.append(tm)
            e.append(int(round(1 - cz)))
            r.append(rk)
    return t, e, r


def _interval_dict(iv: Interval) -> dict[str, Any]:
    return {"c_index": iv.c_index, "lo": iv.lo, "hi": iv.hi}


def run_context(run: TrainRun, figures: Mapping[str, str], n_boot: int = N_BOOT,
                predict_run: str | None = None) -> dict[str, Any]:
    """Everything the index shows about one training run (``figures``: name -> URL in the report)."""
    from ..training.config import TrainConfig

    m, cfg = run.metrics, run.config
    folds = sorted({str(r.get("fold", "")) for r in run.predictions}, key=lambda k: (len(k), k))
    table = []
    for k in folds:
        iv = cindex_interval(*_validation([r for r in run.predictions if str(r.get("fold", "")) == k]), n_boot=n_boot)
        table.append({"fold": k, **_interval_dict(iv), "n_cases": iv.n_cases, "n_events": iv.n_events,
                      "epoch": (m.get("selected_epochs") or {}).get(k, "")})
    pooled = cindex_interval(*_validation(run.predictions), n_boot=n_boot)
    case_sp, gene_sp = m.get("spearman_per_family") or {}, m.get("gene_spearman_per_family") or {}
    genes = [{"family": fam, "case_mean": (case_sp.get(fam) or {}).get("mean"),
              "case_std": (case_sp.get(fam) or {}).get("std"), "case_n": (case_sp.get(fam) or {}).get("n", 0),
              "gene_mean": (gene_sp.get(fam) or {}).get("mean"), "gene_std": (gene_sp.get(fam) or {}).get("std"),
              "gene_n": (gene_sp.get(fam) or {}).get("n", 0)} for fam in dict.fromkeys([*gene_sp, *case_sp])]
    values = {k: v for k, v in cfg.items() if k not in NOT_OPTIONS}
    return {
        "name": run.name, "model": run.model, "predict": run.name == predict_run,
        "protocol": cfg.get("protocol", "ghanet"), "preset": cfg.get("preset"),
        "encoder": {"encoder": "?", "weights_sha256": "?", "input_size": "?", "patch_size": "?", "target_mpp": "?",
                    **(cfg.get("encoder") or {})},
        "ghanet_version": cfg.get("ghanet_version", "?"), "folds": ", ".join(map(str, cfg.get("folds") or folds)),
        "folds_table": table, "pooled": _interval_dict(pooled), "n_cases": pooled.n_cases, "n_events": pooled.n_events,
        "mean": m.get("c_index_mean"), "std": m.get("c_index_std"), "logrank_p": m.get("logrank_p"),
        "risk_split": m.get("risk_split", ""), "optimistic": bool(m.get("optimistic")),
        "warnings": list(m.get("warnings") or []), "genes": genes,
        "figures": [{"src": figures[k], "caption": FIGURE_CAPTIONS[k]} for k in FIGURE_CAPTIONS if k in figures],
        "options": option_rows(values, cfg.get("option_sources") or {}, dataclass_defaults(TrainConfig)),
    }


def genomics_context(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The preprocess-genomics options and their sources, or None without a genomics folder."""
    if not doc:
        return None
    from ..genomics.config import GenomicsConfig

    cfg = doc.get("config") or {}
    return {"protocol": doc.get("protocol", "ghanet"), "preset": doc.get("preset"), "de_method": doc.get("de_method"),
            "de_method_reason": doc.get("de_method_reason", ""), "n_cases": doc.get("n_cases"),
            "n_folds": doc.get("n_folds"),
            "options": option_rows(cfg, cfg.get("option_sources") or {}, dataclass_defaults(GenomicsConfig))}


def case_rows(folder: RunFolder, run: TrainRun | None, pages_by_slide: Mapping[str, SlidePage]) -> list[dict[str, Any]]:
    """The case table: validation cases of ``run`` (group by the fold's threshold) and predicted cases."""
    rows = []
    if run is not None:
        thr = run.metrics.get("risk_thresholds") or {}
        for r in run.predictions:
            risk, fold = _float(r.get("risk")), str(r.get("fold", ""))
            t = _float(thr.get(fold))
            group = "" if risk is None or t is None else ("high" if risk > t else "low")
            rows.append(_row(str(r.get("case_id")), fold, risk, group, _float(r.get("survival_months")),
                             _float(r.get("censorship")), []))
    for rec in folder.cases:
        slides = [{"slide_id": s, "href": pages_by_slide[s].href if s in pages_by_slide else None}
                  for s in rec.get("slide_ids") or []]
        rows.append(_row(str(rec["case_id"]), "predicted", _float(rec.get("risk")), rec.get("risk_group") or "",
                         None, None, slides, status=str(rec.get("status", ""))))
    return rows


def _row(case_id: str, fold: str, risk: float | None, group: str, months: float | None, cens: float | None,
         slides: list[dict[str, Any]], status: str = "done") -> dict[str, Any]:
    cz = "" if cens is None else ("censored" if cens >= 0.5 else "event")
    return {"case_id": case_id, "fold": fold, "risk": risk, "risk_sort": "" if risk is None else f"{risk:.6g}",
            "group": group if status == "done" else status, "survival": months,
            "survival_sort": "" if months is None else f"{months:.6g}", "censorship_text": cz, "slides": slides}


def index_context(folder: RunFolder, pages_list: Sequence[SlidePage], figures: Mapping[str, Mapping[str, str]],
                  n_boot: int, viewer_mpp: float) -> dict[str, Any]:
    """All values of ``index.html`` except the report's size (added by the caller)."""
    import datetime as dt

    runs = [run_context(r, figures.get(r.name, {}), n_boot, folder.predict_run) for r in folder.runs]
    comparison = runs if len(runs) > 1 else []
    main = next((r for r in folder.runs if r.name == folder.predict_run), folder.runs[0] if folder.runs else None)
    by_slide = {p.slide_id: p for p in pages_list}
    cases = case_rows(folder, main, by_slide)
    folds = sorted({c["fold"] for c in cases}, key=lambda k: (k == "predicted", len(k), k))
    slides = [{**asdict(p), "finest_mpp": p.pyramid.finest_mpp if p.pyramid else None, "reused": bool(
        p.pyramid and p.pyramid.reused), "size": _size(p)} for p in pages_list]
    return {"out": str(Path(folder.out).resolve()), "out_name": Path(folder.out).resolve().name,
            "generated": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "runs": runs, "comparison": comparison,
            "genomics": genomics_context(folder.genomics), "slides": slides, "cases": cases, "folds": folds,
            "case_run": main.name if main else None, "viewer_mpp": viewer_mpp, "assets": "assets/"}


def _size(p: SlidePage) -> str:
    from .slidepage import human_bytes

    return human_bytes(p.pyramid.bytes) if p.pyramid else ""


def figure_urls(run_name: str, names: Sequence[str]) -> dict[str, str]:
    """Report-relative URLs of a run's copied figures."""
    return {n: url("assets", "runs", run_name, f"{n}.png") for n in names}
