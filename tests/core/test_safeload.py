"""Files that are not what they claim (pickled objects, renamed formats, truncated) are refused in our words."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import pytest
import torch

from ghanet_pipeline.core.errors import CheckpointError, ConfigError, InputError
from ghanet_pipeline.features.bags import read_bag
from ghanet_pipeline.features.encoders import read_state_dict


class _Obj:  # any class: unpickling it would import and run code from the file's point of view
    pass


def _raw(exc: pytest.ExceptionInfo) -> str:
    return str(exc.value)


def test_clam_pt_bag_with_python_objects_is_refused_naming_the_file(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(torch.ones(5, 4), good)
    assert read_bag(good).features.shape == (5, 4)
    bad = tmp_path / "TCGA-np.pt"
    torch.save({"features": np.zeros((5, 4), dtype=np.float32)}, bad)  # numpy array = pickled object
    with pytest.raises(InputError) as info:
        read_bag(bad)
    msg = _raw(info)
    assert f"CLAM bag {bad} holds Python objects" in msg and "numpy" in msg and "unpickling" in msg
    assert "torch.save(features)" in msg and "weights_only" not in msg and "add_safe_globals" not in msg
    obj = tmp_path / "obj.pt"
    torch.save(collections.OrderedDict(x=_Obj()), obj)
    with pytest.raises(InputError, match=r"holds Python objects \(e.g. test_safeload._Obj\)"):
        read_bag(obj)


@pytest.mark.parametrize("content, says", [
    (b"", "is empty"),
    (b"slide_id,path\n", "is not a PyTorch tensor file"),
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 32, "is an HDF5 file"),
])
def test_pt_bag_that_is_something_else(tmp_path, content, says):
    p = tmp_path / "x.pt"
    p.write_bytes(content)
    with pytest.raises(InputError, match=f"CLAM bag .*x.pt {says}"):
        read_bag(p)


def test_truncated_torch_file(tmp_path):
    full = tmp_path / "full.pt"
    torch.save(torch.ones(50, 4), full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[:60])
    with pytest.raises(InputError, match="cut.pt is a damaged or truncated PyTorch file"):
        read_bag(cut)


def test_weights_files_that_are_not_what_they_claim(tmp_path):
    from safetensors.torch import save_file

    sd = {"conv1.weight": torch.zeros(2, 3)}
    # a .pth holding pickled objects next to its tensors
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": sd, "args": _Obj()}, pth)
    with pytest.raises(ConfigError, match=r"weights file .*w.pth holds Python objects \(e.g. test_safeload._Obj\)"):
        read_state_dict(pth)
    # a torch.save file renamed to .safetensors
    fake = tmp_path / "fake.safetensors"
    torch.save(sd, tmp_path / "real.pth")
    shutil.copy(tmp_path / "real.pth", fake)
    with pytest.raises(ConfigError, match=r"fake.safetensors is not a safetensors file despite its name "
                                          r"\(a PyTorch \(torch.save\) file, which ghanet does not unpickle\)"):
        read_state_dict(fake)
    # a safetensors file named .pth
    st = tmp_path / "real.safetensors"
    save_file(sd, str(st))
    shutil.copy(st, tmp_path / "renamed.pth")
    with pytest.raises(ConfigError, match="renamed.pth is a safetensors file, not a torch.save file: rename it"):
        read_state_dict(tmp_path / "renamed.pth")
    assert torch.equal(read_state_dict(st)["conv1.weight"], sd["conv1.weight"])
    # a truncated safetensors file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:-8])
    with pytest.raises(ConfigError, match="cut.safetensors is a damaged or truncated safetensors file"):
        read_state_dict(cut)


def test_checkpoint_weights_that_are_not_safetensors(tmp_path):
    from ghanet_pipeline.core.files import file_sha256
    from ghanet_pipeline.models import create_model, load_checkpoint, save_checkpoint

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


def test_saved_safetensors_are_byte_identical(tmp_path):
    """safetensors writes its metadata in hash-map order (it changes from one save to the next, even in one
    process); ours sorts it, so the same weights give the same bytes (and weights_sha256)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ghanet_pipeline.core.safeload import save_safetensors

    tensors = {"b": torch.arange(4.0), "a": torch.ones(2, 3)}
    meta = {k: str(i) for i, k in enumerate(["fold", "epoch", "model", "format", "config_hash", "x"])}
    raw = set()
    for i in range(4):
        save_file(tensors, str(tmp_path / f"raw{i}.safetensors"), metadata=meta)
        raw.add((tmp_path / f"raw{i}.safetensors").read_bytes())
    assert len(raw) > 1  # the problem being fixed
    ours = {save_safetensors(tensors, tmp_path / f"w{i}.safetensors", metadata=meta).read_bytes() for i in range(4)}
    assert len(ours) == 1
    with safe_open(str(tmp_path / "w0.safetensors"), framework="pt") as fh:
        assert fh.metadata() == meta
        assert torch.equal(fh.get_tensor("a"), tensors["a"]) and torch.equal(fh.get_tensor("b"), tensors["b"])


def test_finished_fold_predictions_are_read_back_exactly(tmp_path):
    """A rerun that skips a finished fold rebuilds the run's reports from its predictions.csv: the numbers
    must be the very floats that were written (pandas' default parser was off in the last digit)."""
    import pandas as pd

    from ghanet_pipeline.training.state import load_finished_fold

    risks = [-1.0564898252487183, 0.1 + 0.2, -2.718281828459045, 1e-17 + 0.3]
    pd.DataFrame({"fold": 0, "case_id": ["a", "b", "c", "d"], "risk": risks}).to_csv(tmp_path / "predictions.csv",
                                                                                   index=False)
    (tmp_path / "history.json").write_text(json.dumps({"epochs": [], "selected_epoch": 1}))
    (tmp_path / "model.json").write_text(json.dumps({"train_risk_median": 0.0}))
    got = load_finished_fold(tmp_path, 0).predictions["risk"].tolist()
    assert got == risks  # exact, not approx
