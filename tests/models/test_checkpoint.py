"""Checkpoints (models/checkpoint.py): round trip without unpickling, refused folders, files and pairs, and
the fingerprint of trained folds."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ghanet_pipeline.core.errors import CheckpointError, MismatchError
from ghanet_pipeline.core.fingerprints import check_same
from ghanet_pipeline.models import create_model, load_checkpoint, save_checkpoint
from ghanet_pipeline.testing import train_tiny

#: a narrow G-HANet (three families, one of them empty)
TINY_MODEL = dict(in_dim=16, family_sizes=[3, 0, 4], n_bins=4, dim=32, heads=2, dropout=0.25, topk=0.2)
META = {"families": ["a", "b", "c"], "selected": {"a": ["G1", "G2", "G3"], "b": [], "c": list("WXYZ")},
        "scaler": None, "bin_edges_months": [0.0, 5.0, 10.0, 20.0, 80.0],
        "encoder": {"encoder": "resnet50_trunc", "weights_sha256": "random:0", "input_size": 224,
                    "target_mpp": 0.5, "patch_size": 256},
        "train_risk_median": -2.5, "fold": 0, "epoch": 19}


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("ghanet", **TINY_MODEL)


@pytest.fixture(scope="module")
def trained(synthetic_study, trained_run, tmp_path_factory):
    """Two training runs on the shared study: ``a`` (the session's ``trained_run``, folds 0 and 1) and ``b``
    (fold 1 with another seed: other weights). Read-only: a test that changes one copies it first."""
    b = train_tiny(synthetic_study, tmp_path_factory.mktemp("trained"), folds=(1,), run_name="b", seed=1).run_dir
    return trained_run / "train" / "tiny", b


def test_checkpoint_pair_from_different_trainings_is_refused(trained, tmp_path):
    from ghanet_pipeline.core.files import file_sha256

    run = tmp_path / "a"
    shutil.copytree(trained[0], run)
    load_checkpoint(run / "fold_0")
    # fold 1's weights under fold 0's model.json, with the hash updated (a careless copy): refused
    shutil.copy(run / "fold_1" / "model.safetensors", run / "fold_0" / "model.safetensors")
    meta = json.loads((run / "fold_0" / "model.json").read_text())
    meta["weights_sha256"] = file_sha256(run / "fold_0" / "model.safetensors")
    (run / "fold_0" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="belong to different trainings.*fold '1' vs '0'"):
        load_checkpoint(run / "fold_0")


def test_checkpoint_fingerprint_names_the_folds_whose_weights_differ(trained):
    from ghanet_pipeline.models.checkpoint import checkpoint_fingerprint

    a, b = trained
    fa = checkpoint_fingerprint([a / "fold_0", a / "fold_1"])
    assert checkpoint_fingerprint([a / "fold_0", a / "fold_1"]) == fa  # recomputed: equal
    digest = json.loads((a / "config.json").read_text())["fingerprint_digest"]
    assert fa["training"].items == {"fold_0": digest, "fold_1": digest}
    # run b: same inputs, other seed -> other weights
    mixed = checkpoint_fingerprint([a / "fold_0", b / "fold_1"])
    with pytest.raises(MismatchError) as exc:
        check_same(fa, mixed, "predictions in out/", "Use another --out.")
    assert "- model: 1 changed (fold_1:" in str(exc.value) and "- training:" in str(exc.value)


def test_checkpoint_weights_that_are_not_safetensors(tmp_path):
    from ghanet_pipeline.core.files import file_sha256

    fold = tmp_path / "fold_0"
    save_checkpoint(fold, create_model("abmil", in_dim=4, n_bins=4, dim=8), {"fold": 0})
    weights = fold / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, weights)  # a pickle-based file under the safetensors name
    meta = json.loads((fold / "model.json").read_text())
    meta["weights_sha256"] = file_sha256(weights)  # as if both were replaced together
    (fold / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="checkpoint weights .*model.safetensors is not a safetensors file "
                                              "despite its name .*Retrain this fold"):
        load_checkpoint(fold)


@pytest.mark.parametrize("name", ["ghanet", "abmil"])
def test_checkpoint_round_trip(tmp_path, monkeypatch, name):
    model = tiny(seed=5) if name == "ghanet" else create_model("abmil", in_dim=16, dim=32)
    save_checkpoint(tmp_path / "fold_0", model, META)
    assert sorted(p.name for p in (tmp_path / "fold_0").iterdir()) == ["model.json", "model.safetensors"]
    meta_json = json.loads((tmp_path / "fold_0" / "model.json").read_text())
    assert meta_json["model"] == name and meta_json["checkpoint_version"] == 1
    assert meta_json["model_config"] == model.config

    def no_pickle(*a, **k):
        raise AssertionError("load_checkpoint must not unpickle")
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded, meta = load_checkpoint(tmp_path / "fold_0", device="cpu")
    assert not loaded.training and meta["bin_edges_months"] == META["bin_edges_months"]
    assert meta["selected"] == META["selected"] and meta["train_risk_median"] == -2.5
    model.eval()
    feats = torch.randn(17, 16)
    with torch.no_grad():
        a, b = model(feats), loaded(feats)
    assert torch.equal(a["risk"], b["risk"]) and torch.equal(a["hazards"], b["hazards"])
    if name == "ghanet":
        assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a["recon"], b["recon"], strict=False))


def test_load_checkpoint_refuses_bad_directories(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    d = tmp_path / "fold_1"
    save_checkpoint(d, tiny(), META)
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**meta, "checkpoint_version": 99}))
    with pytest.raises(CheckpointError, match="checkpoint_version 99"):
        load_checkpoint(d)
    (d / "model.json").write_text(json.dumps({**meta, "model": "nope"}))
    with pytest.raises(CheckpointError, match="nope"):
        load_checkpoint(d)
    (d / "model.json").write_text(json.dumps({**meta, "model_config": {**meta["model_config"], "dim": 64}}))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(d)
    (d / "model.json").write_text(json.dumps(meta))
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-8] + b"12345678")
    with pytest.raises(CheckpointError, match="weights_sha256"):
        load_checkpoint(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(d)
