"""The int8 fidelity benchmark's recipes are what their names say (benchmarks/bench_int8_fidelity.py)."""

from __future__ import annotations

import dataclasses

from benchmarks.bench_int8_fidelity import BASE, RECIPES
from ghanet_pipeline.features.engines.int8 import Recipe


def test_plain_recipe_sets_every_quantization_field_to_nncf_defaults():
    # a field missing from BASE would silently take Recipe's own (tuned) default: "plain" would not be plain
    tuned = {f.name for f in dataclasses.fields(Recipe)} - {"patches", "seed", "holdout", "validation"}
    assert tuned <= set(BASE)
    plain = Recipe(**RECIPES["plain"])
    assert (plain.ranges, plain.fp32_convs, plain.bias_correction, plain.channel_alignment, plain.max_error) == (
        "minmax", (), "fast", False, None)


def test_each_recipe_changes_one_thing_from_plain():
    plain = Recipe(**BASE).as_dict()
    for name, spec in RECIPES.items():
        if name in ("default", "plain", "plain_dense"):
            continue
        changed = {k for k, v in Recipe(**spec).as_dict().items() if v != plain[k]}
        assert len(changed) == 1, (name, changed)
    assert RECIPES["default"] == {}  # the recipe extract-features uses
