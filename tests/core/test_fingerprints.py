"""The generic fingerprint mechanism (core/fingerprints.py): differences named per component and item."""

from __future__ import annotations

import pytest

from ghanet_pipeline.core.errors import MismatchError
from ghanet_pipeline.core.fingerprints import check_same, component_from_items, component_from_mapping


def test_differences_are_named_per_component_and_item():
    old = {"features": component_from_items({"s1": "aaa", "s2": "bbb", "s3": "ccc"}, "3 bags"),
           "options": component_from_mapping({"lr": 2e-4, "epochs": 20})}
    new = {"features": component_from_items({"s1": "aaa", "s2": "zzz", "s4": "ddd"}, "3 bags"),
           "options": component_from_mapping({"lr": 1e-3, "epochs": 20})}
    check_same(old, dict(old), "x", "fix")  # identical: no error
    with pytest.raises(MismatchError) as exc:
        check_same(old, new, "run folder r", "Use --run-name NEW or --overwrite.")
    msg = str(exc.value)
    assert "features: 1 changed (s2: bbb -> zzz), 1 no longer present (s3), 1 new (s4)" in msg
    assert "options: 1 changed (lr: 0.0002 -> 0.001)" in msg and "epochs" not in msg
    assert msg.endswith("Nothing was changed. Use --run-name NEW or --overwrite.")
    check_same(old, new, "x", "fix", ignore=("features", "options"))
