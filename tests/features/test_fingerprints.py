"""Bag fingerprints (features/fingerprints.py): the hash recorded at extraction equals hashing the data."""

from __future__ import annotations

import numpy as np

from ghanet_pipeline.features.bags import read_bag, read_bag_attrs
from ghanet_pipeline.features.fingerprints import bag_content_sha, features_sha256


def test_bag_hash_recorded_at_extract_and_equal_to_hashing_the_data(tmp_path, synthetic_study):
    feats = synthetic_study.features
    bag = sorted(feats.glob("*.h5"))[0]
    attrs = read_bag_attrs(bag)
    features = read_bag(bag).features
    assert attrs["features_sha256"] == features_sha256(features.astype(np.float32))
    # the same features without the recorded attr (older ghanet / foreign bag) hash to the same value
    import h5py

    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as h5:
        h5["features"] = features
        h5["coords"] = np.zeros((len(features), 2), np.int64)
    assert bag_content_sha(plain) == bag_content_sha(bag) == attrs["features_sha256"][:16]
    changed = features.copy()
    changed[0, 0] += 1e-3
    with h5py.File(plain, "w") as h5:
        h5["features"] = changed
    assert bag_content_sha(plain) != bag_content_sha(bag)  # new mtime/size: not served from the cache
