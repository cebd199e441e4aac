"""``--config FILE.yaml``: every key maps onto a real option of its command; unknown keys are usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from ghanet_pipeline.cli import cli
from ghanet_pipeline.cli.config import option_names


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _invoke(cfg: Path, *args: str):
    return CliRunner().invoke(cli, ["--config", str(cfg), *args])


def test_resize_in_config_gives_224_px_features(make_synthetic_slide, tmp_path):
    slide = make_synthetic_slide("cfg_small.svs", 1280, 1024, mpp=0.5, phenotype=0.3, seed=5)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("extract-features:\n  resize: 224\n  weights: random\n  --batch-size: 8\n  num_workers: 0\n"
                   "  device: cpu\n  threads: 1\n")
    res = _invoke(cfg, "extract-features", str(slide), "--out", str(tmp_path / "o"), "--no-progress")
    assert res.exit_code == 0, res.output
    bags = list((tmp_path / "o" / "features").glob("*/cfg_small.h5"))
    assert [b.parent.name for b in bags] == ["resnet50_trunc_224_random0"]
    with h5py.File(bags[0], "r") as h5:
        assert int(h5.attrs["input_size"]) == 224 and h5["features"].shape[0] > 0
    log = json.loads(next((tmp_path / "o" / "logs").glob("extract-features-*.json")).read_text())
    assert log["config"]["input_size"] == 224 and log["config"]["batch_size"] == 8


@pytest.mark.parametrize("cmd, key, param", [
    ("extract-features", "resize", "input_size"), ("extract-features", "--resize", "input_size"),
    ("extract-features", "input_size", "input_size"), ("extract-features", "input-size", "input_size"),
    ("train", "folds", "folds_text"), ("train", "folds_text", "folds_text"),
    ("predict", "features", "features_dir"), ("predict", "model", "model_dir"),
    ("segment", "min_tissue_area", "min_tissue_area"), ("segment", "slides", "slides"),
])
def test_flag_spellings_and_parameter_names_map_to_the_parameter(cmd, key, param):
    command = cli.get_command(None, cmd)  # type: ignore[arg-type]
    assert option_names(command)[key.lstrip("-").replace("-", "_")] == (param, False)


def test_train_folds_from_config_reach_the_command(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train:\n  folds: '7'\n  epochs: 1\n")
    (tmp_path / "f").mkdir()
    res = _invoke(cfg, "train", "--features", str(tmp_path / "f"), "--genomics", str(tmp_path / "missing"))
    # the genomics check comes first; check that folds/epochs were accepted as options (no usage error on them)
    assert res.exit_code == 2 and "genomics folder" in res.output and "--config" not in res.output


@pytest.mark.parametrize("section, key, close", [
    ("extract-features", "bogus-option", None),
    ("extract-features", "resise", "resize"),
    ("segment", "patchsize", "patch-size"),
    ("predict", "heatmap", "heatmaps"),
])
def test_unknown_key_is_a_usage_error_naming_it_and_the_closest_option(tmp_path, section, key, close):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"{section}:\n  {key}: 1\n")
    res = _invoke(cfg, "segment", str(tmp_path / "x.svs"), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2, res.output
    text = _one_line(res.output)
    assert f"'{key}' is not an option of `ghanet {section}`" in text
    if close:
        assert f"did you mean '{close}'" in text
    assert not (tmp_path / "o").exists()  # nothing ran


def test_same_option_twice_and_bad_values_are_usage_errors(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("extract-features:\n  resize: 224\n  input_size: 128\n")
    res = _invoke(cfg, "segment", str(tmp_path / "x.svs"))
    assert res.exit_code == 2 and "sets --resize twice" in _one_line(res.output)
    cfg.write_text("segment:\n  patch-size: big\n")
    res = _invoke(cfg, "segment", str(tmp_path / "x.svs"), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "--patch-size" in res.output and "big" in res.output


def test_manifest_errors_exit_2(tmp_path):
    man = tmp_path / "m.csv"
    man.write_text("slide_id,file\na,a.svs\n")
    res = CliRunner().invoke(cli, ["segment", "--manifest", str(man), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "missing column(s) path" in res.output
    res = CliRunner().invoke(cli, ["segment", "--manifest", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "nope.csv does not exist" in res.output
