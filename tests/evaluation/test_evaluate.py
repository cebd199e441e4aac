"""evaluate_predictions / `ghanet evaluate` on tables with and without a fold column."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.core.errors import InputError
from ghanet_pipeline.evaluation.evaluate import Columns, evaluate_predictions
from ghanet_pipeline.evaluation.metrics import NoComparablePairsError, concordance_index


def _table(n: int = 90, folds: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = np.round(rng.exponential(scale=np.exp(-risk) * 30), 1)
    cens = (rng.random(n) < 0.3).astype(int)
    return pd.DataFrame({"fold": np.arange(n) % folds, "case_id": [f"C{i:03d}" for i in range(n)],
                         "risk": risk, "survival_months": time, "censorship": cens})


def test_per_fold_mean_std_pooled_and_plots(tmp_path):
    df = _table()
    m = evaluate_predictions(df, tmp_path)
    per = {k: concordance_index(s.survival_months, 1 - s.censorship, s.risk) for k, s in df.groupby("fold")}
    assert m["c_index_per_fold"] == pytest.approx({str(k): v for k, v in per.items()})
    assert m["c_index_mean"] == pytest.approx(np.mean(list(per.values())))
    assert m["c_index_std"] == pytest.approx(np.std(list(per.values())))
    assert m["c_index_pooled"] == pytest.approx(concordance_index(df.survival_months, 1 - df.censorship, df.risk))
    assert m["c_index_mean"] > 0.6 and m["logrank_p"] < 0.05
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["c_index_per_fold"].keys() == {"0", "1", "2"}
    assert (tmp_path / "km.png").stat().st_size > 10_000
    # a model with no signal: c-index about 0.5 and no significant split
    df2 = df.assign(risk=np.random.default_rng(5).normal(size=len(df)))
    m2 = evaluate_predictions(df2, tmp_path / "null")
    assert abs(m2["c_index_pooled"] - 0.5) < 0.12 and m2["c_index_pooled"] < m["c_index_pooled"]


def test_without_fold_column_is_pooled(tmp_path):
    df = _table().drop(columns="fold")
    m = evaluate_predictions(df, tmp_path)
    assert m["c_index_per_fold"] == {} and m["c_index_mean"] is None
    assert m["c_index_pooled"] == pytest.approx(concordance_index(df.survival_months, 1 - df.censorship, df.risk))
    assert m["columns_read"]["fold"].startswith("(none")


def test_thresholds_split_groups(tmp_path):
    df = _table(folds=2)
    m = evaluate_predictions(df, tmp_path, thresholds={"0": 100.0, "1": -100.0})  # fold 0 all low, fold 1 all high
    assert m["n_high_risk"] == (df.fold == 1).sum()
    assert m["risk_split"].startswith("per-fold training-risk")


def test_event_column_and_custom_names(tmp_path):
    df = _table().rename(columns={"case_id": "patient", "risk": "score", "survival_months": "os", "fold": "split"})
    df["dead"] = 1 - df.pop("censorship")
    m = evaluate_predictions(df, tmp_path, Columns(case="patient", risk="score", time="os", event="dead", fold="split"))
    ref = evaluate_predictions(_table(), tmp_path / "ref")
    assert m["c_index_per_fold"] == pytest.approx(ref["c_index_per_fold"])
    assert m["columns_read"]["event"] == "dead"


def test_fold_without_comparable_pairs_is_null_with_warning(tmp_path):
    df = _table()
    df.loc[df.fold == 2, "censorship"] = 1
    m = evaluate_predictions(df, tmp_path)
    assert m["c_index_per_fold"]["2"] is None
    assert any("fold 2" in w and "no comparable pairs" in w for w in m["warnings"])
    assert m["c_index_mean"] == pytest.approx(np.mean([m["c_index_per_fold"]["0"], m["c_index_per_fold"]["1"]]))
    df["censorship"] = 1
    with pytest.raises(NoComparablePairsError, match="no fold has comparable pairs"):
        evaluate_predictions(df, tmp_path / "x")


def test_bad_tables_named(tmp_path):
    df = _table()
    with pytest.raises(InputError, match="missing column.*risk"):
        evaluate_predictions(df.drop(columns="risk"), tmp_path)
    bad = df.copy()
    bad.loc[3, "risk"] = np.nan
    with pytest.raises(InputError, match="'risk' has 1 missing"):
        evaluate_predictions(bad, tmp_path)
    dup = pd.concat([df, df.iloc[:1]])
    with pytest.raises(InputError, match="more than once"):
        evaluate_predictions(dup, tmp_path)
    with pytest.raises(InputError, match="must be 0/1"):
        evaluate_predictions(df.assign(censorship=2), tmp_path)
    no_id = df.astype({"case_id": object})
    no_id.loc[4, "case_id"] = None
    with pytest.raises(InputError, match=r"1 empty case id\(s\) \(file lines \[6\]\)"):
        evaluate_predictions(no_id, tmp_path)
    with pytest.raises(InputError, match="no rows"):
        evaluate_predictions(df.iloc[:0], tmp_path)


def test_predictions_file_tsv_and_empty_case_id(tmp_path):
    df = _table()
    tsv = tmp_path / "pred.tsv"
    df.to_csv(tsv, sep="\t", index=False)
    m = evaluate_predictions(tsv, tmp_path / "tsv")
    assert m["c_index_per_fold"] == evaluate_predictions(df, tmp_path / "ref")["c_index_per_fold"]
    csv = tmp_path / "pred.csv"
    df.assign(case_id=["" if i == 7 else c for i, c in enumerate(df.case_id)]).to_csv(csv, index=False)
    with pytest.raises(InputError, match=r"pred.csv: column 'case_id' has 1 empty case id.*\[9\]"):
        evaluate_predictions(csv, tmp_path / "x")


def test_cli_evaluate(tmp_path):
    csv = tmp_path / "pred.csv"
    _table().to_csv(csv, index=False)
    runner = CliRunner()
    res = runner.invoke(cli, ["evaluate", str(csv), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "mean ± std" in res.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(m["c_index_per_fold"]) == {"0", "1", "2"}
    res = runner.invoke(cli, ["evaluate", str(csv), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2 and "already exists" in res.output
    res = runner.invoke(cli, ["evaluate", str(csv), "--out", str(tmp_path / "ev2"), "--no-folds"])
    assert res.exit_code == 0
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["c_index_per_fold"] == {}
    res = runner.invoke(cli, ["evaluate", str(csv), "--out", str(tmp_path / "ev3"), "--risk-col", "nope"])
    assert res.exit_code == 1 and "missing column" in res.output
