"""--protocol official|ghanet and --preset (protocols/presets.py): the protocol table, the papers' presets, and
which value wins (explicit > preset > protocol), recorded per option."""

from __future__ import annotations

import pytest

from ghanet_pipeline.core.errors import ConfigError
from ghanet_pipeline.genomics import GenomicsConfig
from ghanet_pipeline.protocols.presets import PRESETS, PROTOCOLS, resolve
from ghanet_pipeline.training.config import TrainConfig

# ---------------------------------------------------------------- the table, presets, precedence

def test_protocols_differ_exactly_where_the_table_says():
    ours, official = PROTOCOLS["ghanet"], PROTOCOLS["official"]
    assert (ours.topk_rule, official.topk_rule) == ("ceil", "floor")
    assert (ours.bins_from, official.bins_from) == ("train", "cohort")
    assert (ours.ttest_groups, official.ttest_groups) == ("cases", "loader")
    assert (ours.accumulation, official.accumulation) == ("epoch", "carry-over")
    assert (ours.select, official.select) == ("final", "best-epoch")
    assert (ours.de_method, official.de_method) == ("auto", "ttest")


@pytest.mark.parametrize("name,topk,lr,de", [("tcga_blca", 0.20, 2e-4, None), ("tcga_luad", 0.20, 2e-4, None),
                                            ("tcga_brca", 0.15, 2e-4, None), ("tcga_gbmlgg", 0.15, 2e-4, None),
                                            ("tcga_ucec", 0.30, 1e-4, "none")])
def test_presets_resolve_to_the_papers_numbers(name, topk, lr, de):
    cfg = TrainConfig(preset=name)
    assert cfg.topk == topk and cfg.lr == lr
    assert cfg.option_sources["topk"] == f"preset {name}" and cfg.option_sources["lr"] == f"preset {name}"
    g = GenomicsConfig(table="t.csv", families="f.csv", preset=name)
    assert g.de_method == (de or "auto")
    assert set(PRESETS) == {"tcga_blca", "tcga_brca", "tcga_gbmlgg", "tcga_luad", "tcga_ucec"}


def test_explicit_values_win_over_preset_and_protocol_and_sources_are_recorded():
    cfg = TrainConfig(protocol="official", preset="tcga_ucec", lr=5e-4, select="final")
    assert cfg.lr == 5e-4 and cfg.topk == 0.30 and cfg.select == "final"
    assert cfg.topk_rule == "floor" and cfg.accumulation == "carry-over"
    assert cfg.option_sources == {"topk_rule": "protocol official", "accumulation": "protocol official",
                                  "select": "explicit", "topk": "preset tcga_ucec", "lr": "explicit"}
    plain = TrainConfig()
    assert (plain.lr, plain.topk, plain.select, plain.topk_rule, plain.accumulation) == \
        (2e-4, 0.2, "final", "ceil", "epoch")
    g = GenomicsConfig(table="t.csv", families="f.csv", protocol="official", preset="tcga_ucec", bins_from="train")
    assert (g.de_method, g.bins_from, g.ttest_groups, g.lfc) == ("none", "train", "loader", 0.0)
    values, sources = resolve("official", None, ("bins_from", "lfc"), {"bins_from": None, "lfc": 2.0})
    assert values == {"bins_from": "cohort", "lfc": 2.0} and sources["lfc"] == "explicit"
    with pytest.raises(ConfigError, match="official"):
        TrainConfig(protocol="paper")
    with pytest.raises(ConfigError, match="tcga_blca"):
        TrainConfig(preset="tcga_kirc")
