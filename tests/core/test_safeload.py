"""Safe loading and saving (core/safeload.py): files that are not what they claim (pickled objects, renamed
formats, truncated) are refused in our words; saved safetensors are byte-identical in every process."""

from __future__ import annotations

import collections
import hashlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ghanet_pipeline.core.errors import ConfigError, InputError
from ghanet_pipeline.features.bags import read_bag
from ghanet_pipeline.features.encoders import read_state_dict
from ghanet_pipeline.testing import package_env


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
    with pytest.raises(InputError, match=rf"holds Python objects \(e.g. {re.escape(_Obj.__module__)}._Obj\)"):
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
    with pytest.raises(ConfigError, match=rf"weights file .*w.pth holds Python objects \(e.g. {re.escape(_Obj.__module__)}._Obj\)"):
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


@pytest.mark.slow  # starts Python processes (each imports torch)
def test_safetensors_bytes_do_not_depend_on_the_process(tmp_path):
    """safetensors orders metadata by a per-process hash map; safeload.save_safetensors sorts them, so a
    checkpoint's weights_sha256 is the same in every run (kill + rerun gives identical files)."""
    code = textwrap.dedent("""
        import sys, torch
        from safetensors.torch import load_file
        from ghanet_pipeline.core.safeload import save_safetensors
        t = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(3, dtype=torch.float16)}
        save_safetensors(t, sys.argv[1], {k: str(i) for i, k in enumerate("hgfedcba")})
        back = load_file(sys.argv[1])
        assert torch.equal(back["b.weight"], t["b.weight"]) and torch.equal(back["a.bias"], t["a.bias"])
        """)
    shas = set()
    for i in range(2):  # two processes: unsorted, their metadata orders differ (in one process too, see above)
        path = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(path)], env=package_env(), check=True)
        shas.add(hashlib.sha256(path.read_bytes()).hexdigest())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as fh:
        assert fh.metadata() == {k: str(i) for i, k in enumerate("hgfedcba")}
    assert len(shas) == 1
