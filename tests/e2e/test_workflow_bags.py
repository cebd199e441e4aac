"""The workflow expects each bag where ``extract-features`` writes it, for every registered encoder.

A dry run (`snakemake -n`) of pipelines/Snakefile with ``extract.encoder: <name>`` lists the bag files its
extraction jobs must produce; they must lie in the folder that ``Extractor.bag_dir`` (what the CLI writes
to) gives for the same options: the encoder's own input size (224 for most foundation models), ``--resize``
when given, and a ``_random<seed>`` suffix for random weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ghanet_pipeline.features.encoders import ENCODERS, LoadedEncoder, bag_folder_name, get_encoder_spec
from ghanet_pipeline.testing import run_snakemake, snakemake_path, workflow_config, write_csv

#: every test here starts Snakemake (a dry run, a few seconds): marker ``workflow``
pytestmark = [pytest.mark.workflow,
              pytest.mark.skipif(not snakemake_path().exists(), reason="snakemake not installed (pip install '.[workflow]')")]

#: repository root (pipelines/Snakefile)
REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = str(REPO / "pipelines" / "Snakefile")
#: a weights file's identity as the Extractor records it (any SHA-256; the folder name does not show it)
FILE_SHA = "ab" * 32


def _cohort(tmp: Path) -> None:
    (tmp / "slides").mkdir()
    rows = [[f"S{i}", f"slides/S{i}.svs", f"C{i}"] for i in range(2)]
    for row in rows:
        (tmp / row[1]).write_bytes(b"")  # a dry run only needs the files to exist
    write_csv(tmp / "manifest.csv", ["slide_id", "path", "case_id"], rows)


def _planned_bag_dirs(tmp: Path, extract: dict) -> set[Path]:
    """Folders of the bags the dry run's extract_features jobs must write (slides only: no genomics)."""
    cfg = workflow_config(tmp, tmp / f"cfg-{len(list(tmp.glob('cfg-*')))}.yaml", extract=extract,
                          genomics_table=None, predict_manifest=None)
    res = run_snakemake("-s", SNAKEFILE, "-n", "--configfile", str(cfg), cwd=tmp)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:]
    bags = [b for b in re.findall(r"output: (\S+\.h5)", text) if "/features/" in b]
    assert len(bags) == 2, text[-3000:]
    return {Path(b).parent for b in bags}


def _extractor_bag_dir(out: Path, encoder: str, weights_id: str, input_size: int | None = None) -> Path:
    """``Extractor.bag_dir`` for these options: the real method, with a stand-in model (no weights read)."""
    from torch import nn

    from ghanet_pipeline.features.extract import Extractor, ExtractParams

    loaded = LoadedEncoder(spec=get_encoder_spec(encoder), model=nn.Identity(), weights_id=weights_id)
    params = ExtractParams(encoder=encoder, input_size=input_size, device="cpu", num_workers=0, torch_threads=1)
    return Extractor(params, encoder=loaded).bag_dir(out, patch_size=256)


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_dry_run_expects_the_bag_folder_extract_features_writes(tmp_path: Path, encoder: str) -> None:
    """Every registered encoder, with real weights (a file) or, for every other one, random weights."""
    _cohort(tmp_path)
    random = sorted(ENCODERS).index(encoder) % 2 == 1
    weights = "random:3" if random else str(tmp_path / "w.safetensors")
    planned = _planned_bag_dirs(tmp_path, {"encoder": encoder, "weights": weights})
    expected = _extractor_bag_dir(tmp_path / "out", encoder, "random:3" if random else FILE_SHA)
    assert planned == {expected}
    size = ENCODERS[encoder].default_input_size or 256
    assert expected.name == f"{encoder}_{size}" + ("_random3" if random else "")
    assert expected.name == bag_folder_name(encoder, 256, weights=weights)


def test_dry_run_takes_resize_over_the_encoders_own_input_size(tmp_path: Path) -> None:
    _cohort(tmp_path)
    planned = _planned_bag_dirs(tmp_path, {"encoder": "uni", "resize": 256, "weights": str(tmp_path / "w.pth")})
    assert planned == {_extractor_bag_dir(tmp_path / "out", "uni", FILE_SHA, input_size=256)}
    assert {p.name for p in planned} == {"uni_256"}  # not uni_224, the encoder's default


def test_dry_run_puts_int8_bags_in_their_own_folder(tmp_path: Path) -> None:
    """``extract.precision: int8``: the workflow expects the ``_int8`` folder the Extractor writes."""
    pytest.importorskip("nncf")
    from torch import nn

    from ghanet_pipeline.features.extract import Extractor, ExtractParams

    _cohort(tmp_path)
    planned = _planned_bag_dirs(tmp_path, {"weights": "random:3", "precision": "int8", "device": "cpu"})
    loaded = LoadedEncoder(spec=get_encoder_spec("resnet50_trunc"), model=nn.Identity(), weights_id="random:3")
    params = ExtractParams(encoder="resnet50_trunc", device="cpu", num_workers=0, torch_threads=1, precision="int8",
                           engine="openvino", engine_model="prepared")  # as after prepare() made the model
    expected = Extractor(params, encoder=loaded).bag_dir(tmp_path / "out", patch_size=256)
    assert planned == {expected}
    assert expected.name == "resnet50_trunc_256_random3_int8" == bag_folder_name("resnet50_trunc", 256, None,
                                                                                 "random:3", "int8")
