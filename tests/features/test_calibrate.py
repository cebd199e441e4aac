"""Encoder calibration (features/calibrate.py, `ghanet calibrate-encoder`): random weights made usable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ghanet_pipeline.core.errors import ConfigError, MismatchError
from ghanet_pipeline.core.files import file_sha256
from ghanet_pipeline.features import bags
from ghanet_pipeline.features.calibrate import (
    calibrate_encoder,
    mean_pairwise_cosine,
    read_record,
    sample_patches,
)
from ghanet_pipeline.features.compatibility import check_compatible
from ghanet_pipeline.features.encoders import load_encoder, preprocess
from ghanet_pipeline.wsi.inputs import SlideSpec

#: calibration re-estimates the BatchNorm statistics of a full ResNet50 trunk, layer by layer, on real patches:
#: the module's shared calibration alone takes several seconds
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(make_synthetic_slide) -> list[SlideSpec]:
    """Two 20x slides: almost no dense dark-nuclei tissue, and almost only that."""
    paths = [make_synthetic_slide(f"calib_{i}.tif", 1536, 1536, mpp=0.5, phenotype=p, seed=11 + i)
             for i, p in enumerate((0.05, 0.95))]
    return [SlideSpec(path=p, slide_id=p.stem, case_id=p.stem) for p in paths]


@pytest.fixture(scope="module")
def calibrated(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    res = calibrate_encoder(cohort, out, weights="random:0", n_patches=20, batch_size=8)
    return out, res


def test_library_call_writes_the_run_record(calibrated):
    """Like every stage, the library (not only the CLI) writes <out>/logs/calibrate-encoder-*.json."""
    out, res = calibrated
    records = [json.loads(p.read_text()) for p in (out / "logs").glob("calibrate-encoder-*.json")]
    assert any(r["stage"] == "calibrate-encoder" and r["items"][0]["metrics"]["sha256"] == res.sha256
               for r in records), records


def _features(model, spec, patches) -> np.ndarray:
    with torch.inference_mode():
        return model(preprocess(torch.from_numpy(patches), spec)).numpy()


def test_calibrated_file_records_its_origin_and_is_a_new_encoder_identity(calibrated):
    out, res = calibrated
    assert res.path == out / "encoders" / "resnet50_trunc_random0_calibrated.safetensors" and not res.reused
    assert res.sha256 == file_sha256(res.path) and res.sha256 != "random:0"
    rec = read_record(res.path)
    assert rec["base_weights_id"] == "random:0" and rec["n_patches"] == 20 and rec["batchnorm_layers"] == 43
    assert rec["method"].startswith("batchnorm")
    from safetensors.torch import load_file

    state = load_file(str(res.path))
    assert {"conv1.weight", "bn1.running_mean", "layer3.5.bn3.running_var", "ghanet_calibration.mean"} <= set(state)
    assert not any(k.startswith(("layer4.", "fc.")) for k in state)
    # convolutions unchanged, BatchNorm statistics re-estimated (defaults are mean 0 / var 1)
    raw = load_encoder("resnet50_trunc", "random:0").model.state_dict()
    assert torch.equal(state["conv1.weight"], raw["0.weight"])
    assert state["bn1.running_mean"].abs().max() > 0.05 and not torch.allclose(state["bn1.running_var"], raw["1.running_var"])
    enc = load_encoder("resnet50_trunc", res.path)
    assert enc.weights_id == res.sha256 and '"base_weights_id": "random:0"' in enc.calibration


def test_calibrated_features_are_standardised_and_not_collinear(calibrated, cohort):
    out, res = calibrated
    patches, used = sample_patches(cohort, out, 20, seed=0)
    assert sorted(used) == sorted(s.slide_id for s in cohort)
    raw = load_encoder("resnet50_trunc", "random:0")
    cal = load_encoder("resnet50_trunc", res.path)
    f_raw = _features(raw.model, raw.spec, patches)
    f_cal = _features(cal.model, cal.spec, patches)
    assert mean_pairwise_cosine(f_raw) > 0.99  # the problem: random features nearly collinear
    assert abs(mean_pairwise_cosine(f_cal)) < 0.2
    assert np.abs(f_cal.mean(axis=0)).max() < 1e-2 and np.median(f_cal.std(axis=0)) == pytest.approx(1.0, abs=0.05)


def test_calibrated_features_separate_dense_from_normal_tissue(calibrated, cohort):
    """Nearest-centroid, leave-one-out: patches of the dense slide vs the normal slide."""
    out, res = calibrated
    cal = load_encoder("resnet50_trunc", res.path)
    feats, labels = [], []
    for lab, spec in enumerate(cohort):
        p, _ = sample_patches([spec], out, 10, seed=1)
        feats.append(_features(cal.model, cal.spec, p))
        labels += [lab] * len(p)
    f, y = np.concatenate(feats), np.array(labels)
    hits = 0
    for i in range(len(f)):
        keep = np.arange(len(f)) != i
        c = [f[keep & (y == k)].mean(axis=0) for k in (0, 1)]
        hits += int(np.argmin([np.linalg.norm(f[i] - ck) for ck in c]) == y[i])
    assert hits / len(f) >= 0.9


def test_reuse_refuse_and_overwrite(calibrated, cohort):
    out, res = calibrated
    again = calibrate_encoder(cohort, out, weights="random:0", n_patches=20, batch_size=8)
    assert again.reused and again.sha256 == res.sha256
    with pytest.raises(ConfigError, match="calibrated differently.*--overwrite"):
        calibrate_encoder(cohort, out, weights="random:0", n_patches=16)
    with pytest.raises(ConfigError, match="no slides"):
        calibrate_encoder([], out)


def test_bags_of_calibrated_and_raw_encoder_do_not_mix(calibrated, cohort):
    from ghanet_pipeline.features.extract import Extractor, ExtractParams

    out, res = calibrated
    spec = cohort[0]
    paths = []
    for w in (str(res.path), "random:0"):
        ex = Extractor(ExtractParams(weights=w, batch_size=8, num_workers=0, device="cpu"))
        r = ex.extract(spec, out)
        assert r.ok, r.message
        paths.append(Path(r.metrics["bag"]))
    a, b = (bags.read_bag(p) for p in paths)
    assert a.attrs["weights_sha256"] == res.sha256 and "random:0" in a.attrs["encoder_calibration"]
    assert "encoder_calibration" not in b.attrs
    with pytest.raises(MismatchError, match="weights_sha256"):
        check_compatible([a, b])


def test_cli_calibrate_encoder(calibrated, cohort, tmp_path):
    """The command on the fixture's slides and settings (in a copy of its out folder): it finds the same
    calibration and prints the file, its sha256 and the next command; other settings are a usage error."""
    import shutil

    from click.testing import CliRunner

    from ghanet_pipeline.cli import cli

    out = tmp_path / "out"
    shutil.copytree(calibrated[0], out)
    args = ["calibrate-encoder", *[str(s.path) for s in cohort], "--out", str(out), "--weights", "random:0",
            "--patches", "20", "--batch-size", "8"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    dest = out / "encoders" / "resnet50_trunc_random0_calibrated.safetensors"
    text = r.output.replace("\n", "")
    assert f"reused {dest}" in text and file_sha256(dest) in text and f"--weights {dest}" in text
    records = [json.loads(p.read_text()) for p in (out / "logs").glob("calibrate-encoder-*.json")]
    assert any(r["items"][0]["status"] == "skipped" for r in records), records  # this run's record
    r2 = CliRunner().invoke(cli, args + ["--seed", "5"])
    assert r2.exit_code == 2 and "--overwrite" in r2.output, r2.output
