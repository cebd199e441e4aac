"""Inference engines for the frozen encoder: engine choice and fallback, the converted-model cache (two
processes, atomic), int8 bags and their records, train refusing mixed precisions, predict following its
training bags, check-precision. A tiny registered encoder (two conv + BN layers) keeps conversion and
quantization to a second or two."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from ghanet_pipeline.core.errors import ConfigError, MismatchError
from ghanet_pipeline.env import runtime
from ghanet_pipeline.env.runtime import CpuInfo
from ghanet_pipeline.features.engines import cache as C
from ghanet_pipeline.features.engines import choice as CH
from ghanet_pipeline.features.engines.agreement import agreement, passes
from ghanet_pipeline.features.engines.int8 import stratified_selection
from ghanet_pipeline.wsi.inputs import SlideSpec

pytest.importorskip("openvino")
pytest.importorskip("nncf")

TINY = "tiny_bn_engine_test"
DIM = 16
SIZE = 32


def _register_tiny() -> None:
    from ghanet_pipeline.features import encoders

    if TINY in encoders.ENCODERS:
        return

    def build():
        from torch import nn

        class Full(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
                self.bn1 = nn.BatchNorm2d(8)
                self.conv2 = nn.Conv2d(8, DIM, 3, stride=2, padding=1, bias=False)
                self.bn2 = nn.BatchNorm2d(DIM)

        return Full()

    def trunk(full):
        from torch import nn

        return nn.Sequential(full.conv1, full.bn1, nn.ReLU(), full.conv2, full.bn2, nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(1))

    encoders.register_encoder(encoders.EncoderSpec(
        name=TINY, dim=DIM, build=build, trunk=trunk, required_prefixes=("conv", "bn"),
        hub_files=("tiny-*.pth",), how_to_get="(test encoder)"))


@pytest.fixture(autouse=True)
def _tiny_and_own_cache(monkeypatch):
    _register_tiny()
    monkeypatch.delenv(C.CACHE_ENV, raising=False)  # each test's engines/ under its own --out


@pytest.fixture(scope="module")
def slides(make_synthetic_slide) -> list[Path]:
    """Two small synthetic slides (9 and 3 tissue patches of 256 px)."""
    return [make_synthetic_slide("eng_a.svs", 1280, 1024, mpp=0.5, phenotype=0.3, seed=5),
            make_synthetic_slide("eng_b.svs", 768, 768, mpp=0.5, phenotype=1.0, seed=6)]


def _specs(paths: list[Path]) -> list[SlideSpec]:
    return [SlideSpec(slide_id=p.stem, path=p, case_id=p.stem) for p in paths]


def _params(**kw):
    from ghanet_pipeline.features.extract import ExtractParams

    base = dict(encoder=TINY, weights="random", input_size=SIZE, batch_size=4, num_workers=0, device="cpu",
                torch_threads=1, int8_patches=12)
    return ExtractParams(**{**base, **kw})


def _extract(paths, out, **kw):
    from ghanet_pipeline.features.extract import extract_slides

    res = extract_slides(_specs(paths), out, _params(**kw))
    assert all(r.ok for r in res), [r.message for r in res]
    return res


# --------------------------------------------------------------------------- choice

NO_BF16_CPU = CpuInfo("a CPU without bf16 instructions (test)", frozenset({"avx2"}))
AMX_CPU = CpuInfo("a CPU with AMX (test)", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}))


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """What ``auto`` chooses depends on this machine's CPU: pin one without bf16 (AVX2 only)."""
    monkeypatch.setattr(runtime, "cpu_info", lambda: NO_BF16_CPU)


def test_engine_choice_matrix(monkeypatch, cpu_without_bf16):
    assert CH.resolve_engine("auto", "auto", "cpu").engine == "openvino"
    assert CH.resolve_engine("auto", "fp32", "cpu").precision == "fp32"
    assert CH.resolve_engine("torch", "auto", "cpu").engine == "torch"
    got = CH.resolve_engine("auto", "int8", "cpu")
    assert (got.engine, got.precision) == ("openvino", "int8")
    with pytest.raises(ConfigError, match="int8 runs on the CPU"):
        CH.resolve_engine("torch", "int8", "cpu")
    with pytest.raises(ConfigError, match="int8 runs on the CPU"):
        CH.resolve_engine("auto", "int8", "cuda:0")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        CH.resolve_engine("openvino", "fp32", "cuda")
    with pytest.raises(ConfigError, match="bf16 only on CPUs with bf16 instructions"):
        CH.resolve_engine("openvino", "bf16", "cpu")
    with pytest.raises(ConfigError, match="not fp16"):
        CH.resolve_engine("openvino", "fp16", "cpu")
    got = CH.resolve_engine("auto", "bf16", "cpu")  # emulated bf16: only PyTorch runs it
    assert (got.engine, got.precision) == ("torch", "bf16")
    # auto never picks int8 unless the downstream check allowed it, and never for predict
    monkeypatch.setattr(CH, "INT8_AUTO", True)
    assert CH.resolve_engine("auto", "auto", "cpu").precision == "auto-int8"
    assert CH.resolve_engine("auto", "auto", "cpu", int8_auto=False).precision == "fp32"
    # without OpenVINO: auto runs torch and says why; asking for it is a usage error naming the extra
    monkeypatch.setattr(CH, "missing", lambda with_nncf=False: "OpenVINO is not installed (test)")
    got = CH.resolve_engine("auto", "auto", "cpu")
    assert got.engine == "torch" and "not installed" in got.reason
    with pytest.raises(ConfigError, match=r"ghanet\[openvino\]"):
        CH.resolve_engine("openvino", "auto", "cpu")
    with pytest.raises(ConfigError, match="needs OpenVINO and NNCF"):
        CH.resolve_engine("auto", "int8", "cpu")


def test_engine_choice_on_an_amx_cpu(monkeypatch):
    """On a CPU with AMX-BF16, auto is bf16, computed by OpenVINO (it has the instructions); fp32 and int8 go to
    OpenVINO as elsewhere; PyTorch bf16 only by name."""
    monkeypatch.setattr(runtime, "cpu_info", lambda: AMX_CPU)
    got = CH.resolve_engine("auto", "auto", "cpu")
    assert (got.engine, got.precision) == ("openvino", "bf16") and "AMX" in got.reason
    assert (CH.resolve_engine("auto", "fp32", "cpu").engine, CH.resolve_engine("auto", "int8", "cpu").precision) == (
        "openvino", "int8")
    assert (CH.resolve_engine("openvino", "bf16", "cpu").precision, CH.resolve_engine("torch", "auto", "cpu").engine) == (
        "bf16", "torch")
    got = CH.resolve_engine("openvino", "auto", "cpu")
    assert (got.engine, got.precision) == ("openvino", "bf16")
    monkeypatch.setattr(CH, "INT8_AUTO", True)  # even where int8 may be chosen, AMX's bf16 comes first
    assert CH.resolve_engine("auto", "auto", "cpu").precision == "bf16"
    assert CH.resolve_engine("openvino", "fp32", "cpu").precision == "fp32"
    # without OpenVINO, auto's bf16 runs on PyTorch as before
    monkeypatch.setattr(CH, "missing", lambda with_nncf=False: "OpenVINO is not installed (test)")
    assert (CH.resolve_engine("auto", "auto", "cpu").engine, CH.resolve_engine("auto", "auto", "cpu").precision) == (
        "torch", "bf16")


@pytest.mark.skipif(not runtime.cpu_info().has_bf16, reason="OpenVINO bf16 needs a CPU with bf16 instructions")
def test_openvino_bf16_bag_is_bf16_close_to_fp32_and_says_so(slides, tmp_path):
    """``--engine openvino --precision bf16``: the fp32 model computed in bf16 by the plugin: the bag records
    engine openvino and precision bf16, shares the float bags' folder, and differs from fp32 by bf16 rounding
    (not equal, not far)."""
    from ghanet_pipeline.features.bags import read_bag

    _extract(slides[:1], tmp_path / "bf", engine="openvino", precision="bf16")
    _extract(slides[:1], tmp_path / "fp", engine="openvino", precision="fp32")
    bf = read_bag(next((tmp_path / "bf/features").glob("*/eng_a.h5")))
    fp = read_bag(next((tmp_path / "fp/features").glob("*/eng_a.h5")))
    assert (bf.attrs["engine"], bf.attrs["precision"], fp.attrs["precision"]) == ("openvino", "bf16", "fp32")
    assert bf.path.parent.name == fp.path.parent.name
    err = np.sqrt(((bf.features - fp.features) ** 2).mean()) / np.sqrt(((fp.features - fp.features.mean(0)) ** 2).mean())
    assert 0 < err < 0.3, err


def test_openvino_fp32_bag_equals_torch_and_records_the_engine(slides, tmp_path):
    from ghanet_pipeline.features.bags import read_bag

    _extract(slides[:1], tmp_path / "ov", engine="openvino", precision="fp32")
    _extract(slides[:1], tmp_path / "pt", engine="torch", precision="fp32")
    ov = read_bag(next((tmp_path / "ov/features").glob("*/eng_a.h5")))
    pt = read_bag(next((tmp_path / "pt/features").glob("*/eng_a.h5")))
    assert ov.attrs["engine"] == "openvino" and pt.attrs["engine"] == "torch"
    assert ov.attrs["precision"] == pt.attrs["precision"] == "fp32" and "engine_model" not in ov.attrs
    assert ov.path.parent.name == pt.path.parent.name  # float bags of either engine share a folder
    np.testing.assert_allclose(ov.features, pt.features, rtol=1e-4, atol=1e-5)
    assert (tmp_path / "ov/engines").is_dir() and not (tmp_path / "pt/engines").exists()


def test_openvino_engine_with_reader_processes_gives_the_same_bag(slides, tmp_path):
    """Reader processes beside OpenVINO's threads start from a fork server (a reader forked from a process
    running OpenVINO once hung for 20 minutes on a futex in the feature-extraction tests; the hazard is timing-
    dependent, so this test checks the working path): same bag as reading in the main process."""
    from ghanet_pipeline.features.bags import read_bag

    _extract(slides[:1], tmp_path / "w0", engine="openvino", precision="fp32", num_workers=0)
    _extract(slides[:1], tmp_path / "w2", engine="openvino", precision="fp32", num_workers=2)
    a, b = (read_bag(next((tmp_path / d / "features").glob("*/eng_a.h5"))) for d in ("w0", "w2"))
    np.testing.assert_array_equal(a.features, b.features)


def test_encoder_that_does_not_convert_falls_back_to_torch_with_one_log_line(slides, tmp_path, monkeypatch, caplog):
    from ghanet_pipeline.features.bags import read_bag
    from ghanet_pipeline.features.engines import openvino_runner

    def refuse(encoder, input_size):
        raise RuntimeError("unsupported operation aten::frobnicate")

    monkeypatch.setattr(openvino_runner, "convert", refuse)
    with caplog.at_level(logging.WARNING):
        _extract(slides[:1], tmp_path / "o", engine="openvino", precision="fp32")
    lines = [r.getMessage() for r in caplog.records if "did not convert" in r.getMessage()]
    assert len(lines) == 1 and "aten::frobnicate" in lines[0] and "PyTorch runs" in lines[0]
    bag = read_bag(next((tmp_path / "o/features").glob("*/eng_a.h5")))
    assert bag.attrs["engine"] == "torch" and bag.attrs["precision"] == "fp32"
    assert not list((tmp_path / "o/engines").glob(f"{TINY}*"))  # nothing half-built left in the cache


def test_bf16_that_does_not_convert_falls_back_to_torch_bf16_not_fp32(slides, tmp_path, monkeypatch, caplog):
    """OpenVINO was to compute bf16 (an AMX CPU, pinned): when the encoder does not convert, PyTorch takes over
    in bf16 (autocast really applied: the bag differs from PyTorch fp32's), not silently in fp32."""
    from ghanet_pipeline.features.bags import read_bag
    from ghanet_pipeline.features.engines import openvino_runner

    monkeypatch.setattr(runtime, "cpu_info", lambda: AMX_CPU)
    monkeypatch.setattr(openvino_runner, "convert", lambda encoder, input_size: (_ for _ in ()).throw(
        RuntimeError("unsupported operation aten::frobnicate")))
    with caplog.at_level(logging.WARNING):
        _extract(slides[:1], tmp_path / "bf", precision="auto")
    assert any("PyTorch runs the encoder in bf16" in r.getMessage() for r in caplog.records)
    _extract(slides[:1], tmp_path / "fp", engine="torch", precision="fp32")
    bf = read_bag(next((tmp_path / "bf/features").glob("*/eng_a.h5")))
    fp = read_bag(next((tmp_path / "fp/features").glob("*/eng_a.h5")))
    assert (bf.attrs["engine"], bf.attrs["precision"]) == ("torch", "bf16")
    assert not np.allclose(bf.features, fp.features, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- cache


def _build_in_process(root: str, key: str, log_path: str, barrier, results) -> None:
    barrier.wait()  # both processes ask at the same moment

    def build(tmp: Path) -> dict:
        with open(log_path, "a") as fh:
            fh.write(f"{tmp.name}\n")
        (tmp / "model.bin").write_bytes(b"x" * 1000)
        time.sleep(0.5)  # a slow build: the other process must wait, not build again
        return {"by": str(tmp.name)}

    entry = C.get_or_build(Path(root), key, build)
    results.put(json.dumps({"built": entry.built, "record": entry.record, "path": str(entry.path)}))


def test_cache_builds_once_across_two_processes_and_is_atomic(tmp_path):
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    log_path = tmp_path / "builds.txt"
    procs = [ctx.Process(target=_build_in_process, args=(str(tmp_path / "cache"), "k1", str(log_path), barrier,
                                                          results)) for _ in range(2)]
    for p in procs:
        p.start()
    res = [json.loads(results.get(timeout=60)) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(r["built"] for r in res) == [False, True]
    assert res[0]["record"] == res[1]["record"] and res[0]["path"] == res[1]["path"]
    assert len(log_path.read_text().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".locks", "k1"]  # no temp folder left
    # a build that fails leaves nothing; a killed build's temp folder is removed by the next build
    with pytest.raises(RuntimeError):
        C.get_or_build(tmp_path / "cache", "k2", lambda tmp: (_ for _ in ()).throw(RuntimeError("boom")))
    assert not (tmp_path / "cache/k2").exists()
    (tmp_path / "cache/.k2.dead.tmp").mkdir()
    entry = C.get_or_build(tmp_path / "cache", "k2", lambda tmp: {"ok": 1})
    assert entry.built and entry.record == {"ok": 1} and not (tmp_path / "cache/.k2.dead.tmp").exists()


def test_cache_root_is_under_out_unless_the_user_names_one(tmp_path, monkeypatch):
    assert C.cache_root(tmp_path) == (tmp_path / "engines").resolve()
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "shared-cache"))
    assert C.cache_root(tmp_path / "other") == tmp_path / "shared-cache"


# --------------------------------------------------------------------------- int8


def test_stratified_selection_spreads_evenly_caps_small_slides_and_is_seeded():
    sel = stratified_selection([100, 3, 50], 30, seed=0)
    per = np.bincount([s for s, _ in sel], minlength=3)
    assert per.tolist() == [14, 3, 13] and len(set(sel)) == 30
    assert sel == stratified_selection([100, 3, 50], 30, seed=0)
    assert sel != stratified_selection([100, 3, 50], 30, seed=1)
    assert len(stratified_selection([2, 1], 10, seed=0)) == 3


def test_agreement_figures():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 32)) + 5.0  # a common component: cosine alone would look perfect
    same = agreement(ref, ref)
    assert same["error_spread"] == 0 and same["distance_rank"] == pytest.approx(1) and same["cosine"]["min"] > 0.9999
    noisy = agreement(ref, ref + rng.normal(scale=0.2, size=ref.shape))
    assert noisy["error_spread"] == pytest.approx(0.2, rel=0.05)
    assert noisy["cosine"]["p50"] > 0.99 and not passes(noisy)
    shuffled = agreement(ref, ref[rng.permutation(200)])
    assert abs(shuffled["distance_rank"]) < 0.1


def _tiny_uint8_model(centred: bool = False):
    """A small OpenVINO conv net taking uint8 NHWC patches, as the converted encoders do; ``centred``: inputs
    scaled to [-1, 1] and no biases, so that features differ between patches as much as they are large."""
    import openvino as ov
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = torch.nn.Sequential(*[m for _ in range(4) for m in (
                torch.nn.Conv2d(8, 8, 3, padding=1, bias=not centred), torch.nn.ReLU())])
            self.stem = torch.nn.Conv2d(3, 8, 3, padding=1, bias=not centred)

        def forward(self, x):
            x = x.permute(0, 3, 1, 2).float() / 255.0
            x = 2 * x - 1 if centred else x
            return self.body(torch.relu(self.stem(x))).mean(dim=(2, 3))

    return ov.convert_model(Net().eval(), example_input=torch.zeros(1, 16, 16, 3, dtype=torch.uint8))


def test_accuracy_control_puts_layers_back_to_fp32_until_the_error_is_met():
    import openvino as ov

    from ghanet_pipeline.features.engines.int8 import Recipe, int8_share, quantize
    from ghanet_pipeline.features.engines.openvino_runner import run_compiled

    model = _tiny_uint8_model()
    rng = np.random.default_rng(0)

    def patches(n):  # a colour per patch plus noise: features that differ between patches
        return np.clip(rng.integers(30, 225, (n, 1, 1, 3)) + rng.normal(0, 20, (n, 16, 16, 3)), 0, 255).astype(np.uint8)

    calib, val = patches(24), patches(24)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    ref = run_compiled(core.compile_model(model, "CPU", config), val)

    def error(q):
        return agreement(ref, run_compiled(core.compile_model(q, "CPU", config), val))["error_spread"]

    plain = quantize(model, calib, Recipe(fp32_convs=(), max_error=None), validation=val)
    target = error(plain) / 3  # plain int8 misses it
    controlled = quantize(model, calib, Recipe(fp32_convs=(), max_error=target), validation=val)
    assert error(controlled) <= target < error(plain)
    assert int8_share(plain) == (5, 5) and int8_share(controlled)[0] < 5  # some went back to fp32, not by luck
    loose = quantize(model, calib, Recipe(fp32_convs=(), max_error=2 * error(plain)), validation=val)
    assert int8_share(loose) == (5, 5)  # where plain int8 meets the target nothing goes back


def _build_tiny_int8(tmp_path, monkeypatch, **recipe):
    """``int8.build`` of the tiny centred uint8 model (first convolution in float, as the default recipe) on
    patches whose features differ between patches (a colour per patch): 18 held out, 18 for validation, 36 for
    calibration; returns the record, both model folders and the held-out patches."""
    from types import SimpleNamespace

    from ghanet_pipeline.features.engines import int8
    from ghanet_pipeline.features.engines.openvino_runner import save_ir

    rng = np.random.default_rng(0)
    patches = np.clip(rng.integers(30, 225, (72, 1, 1, 3)) + rng.normal(0, 20, (72, 16, 16, 3)), 0, 255).astype(np.uint8)
    monkeypatch.setattr(int8, "read_sample", lambda sample, size: patches)
    fp32, folder = tmp_path / "fp32", tmp_path / "int8"
    fp32.mkdir(parents=True)
    folder.mkdir()
    save_ir(_tiny_uint8_model(centred=True), fp32)
    sample = SimpleNamespace(picked=[(0, 0)], specs=[None], sha256="x")
    rec = int8.build(folder, fp32, SimpleNamespace(name="tiny", weights_id="random:0"), sample, 16,
                     int8.Recipe(**{"holdout": 24, "validation": 24, **recipe}), None)
    return rec, fp32, folder, patches[:18]


@pytest.mark.skipif(not runtime.cpu_info().has_bf16, reason="OpenVINO bf16 needs a CPU with bf16 instructions")
def test_int8_float_operations_compute_in_bf16_only_where_measured_to_pass(tmp_path, monkeypatch):
    """On a bf16 CPU the operations int8 leaves in float compute in bf16: bf16's own error is taken out of the
    accuracy-control budget, the held-out figures are those of what runs, and the runner computes that way."""
    from ghanet_pipeline.features.engines import int8
    from ghanet_pipeline.features.engines.openvino_runner import compile_ir, run_compiled

    rec, fp32, folder, held = _build_tiny_int8(tmp_path / "a", monkeypatch, float_ops="bf16")
    assert rec["float_ops"] == "bf16" and rec["passes_gate"] and rec["recipe"]["float_ops"] == "bf16"
    bf16_err = rec["bf16_alone"]["error_spread"]
    assert 0 < bf16_err <= 0.05 and rec["accuracy_target"] == pytest.approx((0.1 ** 2 - bf16_err ** 2) ** 0.5)
    assert rec["fidelity"]["error_rms"] != rec["fidelity_fp32_ops"]["error_rms"]  # the figures of what runs
    assert int8.float_ops(rec) == "bf16"
    as_run = run_compiled(compile_ir(folder, None, int8.float_ops(rec)), held)
    assert not np.array_equal(as_run, run_compiled(compile_ir(folder, None, "fp32"), held))
    # a budget bf16 alone would use up: the float operations stay fp32, and the record says why
    rec, *_ = _build_tiny_int8(tmp_path / "b", monkeypatch, float_ops="bf16", max_error=1e-9)
    assert rec["float_ops"] == "fp32" and rec["accuracy_target"] == 1e-9 and "bf16 alone" in rec["notes"][0]
    # held-out figures under bf16 over the gate: fp32 float operations (the first gate check is bf16's)
    calls = iter([False])
    monkeypatch.setattr(int8, "passes", lambda fig: next(calls, True))
    rec, *_ = _build_tiny_int8(tmp_path / "c", monkeypatch, float_ops="bf16")
    assert rec["float_ops"] == "fp32" and rec["fidelity"] == rec["fidelity_fp32_ops"] and "over the gate" in rec["notes"][0]


def test_int8_recipe_float_operations_follow_the_cpu(monkeypatch):
    from ghanet_pipeline.features.engines.int8 import Recipe, float_ops

    monkeypatch.setattr(runtime, "cpu_info", lambda: AMX_CPU)
    assert Recipe.for_this_cpu(patches=8).float_ops == "bf16" and float_ops({"float_ops": "bf16"}) == "bf16"
    monkeypatch.setattr(runtime, "cpu_info", lambda: NO_BF16_CPU)
    assert Recipe.for_this_cpu(patches=8) == Recipe(patches=8, float_ops="fp32")
    assert float_ops({"float_ops": "bf16"}) == "fp32"  # a model made on a bf16 CPU, run on one without
    assert Recipe(float_ops="bf16").as_dict() != Recipe().as_dict()  # so a different cache key
    assert "float_ops" not in Recipe().as_dict()  # fp32: the key int8 models had before float_ops existed


def test_a_cached_int8_model_is_found_without_importing_nncf(tmp_path):
    """Choosing the engine and keying a cached int8 model must not import NNCF (~0.4 s of every process)."""
    import subprocess
    import sys

    code = ("import sys; from types import SimpleNamespace as N\n"
            "from ghanet_pipeline.features.engines import choice, int8\n"
            "assert choice.missing(with_nncf=True) is None\n"
            "int8.model_key(N(weights_id='random:0', name='x'), 32, int8.Recipe(), 'abc')\n"
            "assert 'nncf' not in sys.modules, 'nncf imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_int8_bags_record_the_model_and_go_to_their_own_folder(slides, tmp_path):
    from ghanet_pipeline.features.bags import read_bag

    out = tmp_path / "o"
    res = _extract(slides, out, precision="int8")
    assert {r.metrics["precision"] for r in res} == {"int8"}
    bags = [read_bag(p) for p in sorted((out / "features" / f"{TINY}_{SIZE}_random0_int8").glob("*.h5"))]
    assert len(bags) == 2
    key = bags[0].attrs["engine_model"]
    assert {b.attrs["engine_model"] for b in bags} == {key} and key.startswith(f"{TINY}_{SIZE}_int8_")
    rec = json.loads((out / "engines" / key / "record.json").read_text())
    assert bags[0].attrs["engine_model_sha256"] == rec["model_sha256"] and rec["precision"] == "int8"
    sample = rec["sample"]
    assert sample["slides"] == 2 and sample["patches"] + sample["holdout"] + sample["validation"] == 12
    assert sample["validation"] == 3 and 0 <= rec["int8_convolutions"] <= rec["convolutions"]
    # the recipe asks for bf16 float operations exactly where the CPU has bf16; the record says what was kept
    asked = rec["recipe"].get("float_ops", "fp32")  # fp32 is left out of the recipe (earlier keys stay valid)
    assert asked == ("bf16" if runtime.cpu_info().has_bf16 else "fp32") and rec["float_ops"] in {"fp32", asked}
    assert rec["fidelity"]["patches"] == rec["sample"]["holdout"]
    # close to the fp32 features of the same patches, not equal to them
    _extract(slides[:1], tmp_path / "f", precision="fp32")
    ref = read_bag(next((tmp_path / "f/features").glob("*/eng_a.h5")))
    got = next(b for b in bags if b.attrs["slide_id"] == "eng_a")
    fig = agreement(ref.features, got.features)
    assert fig["cosine"]["p50"] > 0.99 and 0 < fig["error_rms"]
    # a rerun reuses the bags and the model; the same cohort in another process gives the same key
    again = _extract(slides, out, precision="int8")
    assert {r.status for r in again} == {"skipped"}
    assert sorted(p.name for p in (out / "engines").iterdir() if not p.name.startswith(".")) == sorted(
        [key, f"{TINY}_{SIZE}_fp32_random0"])


def test_train_refuses_int8_bags_mixed_with_fp32_bags_unless_told(tmp_path):
    from ghanet_pipeline.features.bags import write_bag
    from ghanet_pipeline.training.data import CaseBags

    base = {"schema_version": 1, "encoder": TINY, "weights_sha256": "random:0", "input_size": SIZE,
            "target_mpp": 0.5, "patch_size": 256, "patch_size_level0": 256, "level0_mpp": 0.5,
            "source_name": "x.svs", "source_bytes": 1, "ghanet_version": "test"}
    kinds = {"a": {"precision": "fp32"}, "b": {"precision": "bf16"},
             "c": {"precision": "int8", "engine_model": "m1", "engine_model_sha256": "abc"},
             "d": {"precision": "int8", "engine_model": "m1", "engine_model_sha256": "abc"},
             "e": {"precision": "int8", "engine_model": "m2", "engine_model_sha256": "def"}}
    paths = {}
    for sid, extra in kinds.items():
        f = np.random.default_rng(0).random((5, DIM)).astype(np.float32)
        c = np.zeros((5, 2), dtype=np.int64)
        paths[sid] = write_bag(tmp_path / f"{sid}.h5", f, c, {**base, "slide_id": sid, **extra})
    assert CaseBags({"x": [paths["a"]], "y": [paths["b"]]}).encoder.get("engine_model") is None  # float: fine
    with pytest.raises(MismatchError, match=r"different precisions.*int8 model m1.*--allow-mixed-precision"):
        CaseBags({"x": [paths["a"]], "y": [paths["c"]]})
    with pytest.raises(MismatchError, match="int8 model m2"):
        CaseBags({"x": [paths["c"]], "y": [paths["e"]]})
    ok = CaseBags({"x": [paths["c"]], "y": [paths["d"]]})
    assert ok.encoder["precision"] == "int8" and ok.encoder["engine_model"] == "m1"  # into the checkpoints
    assert CaseBags({"x": [paths["a"]], "y": [paths["c"]]}, allow_mixed_precision=True).cases() == ["x", "y"]


def test_predict_follows_the_training_bags_int8_model(slides, tmp_path, monkeypatch, cpu_without_bf16, caplog):
    from types import SimpleNamespace

    from ghanet_pipeline.features.bags import read_bag
    from ghanet_pipeline.inference.config import PredictConfig
    from ghanet_pipeline.inference.embed import Embedder

    out = tmp_path / "o"
    _extract(slides, out, precision="int8")
    trained = read_bag(next((out / "features").glob("*_int8/eng_b.h5")))
    key = trained.attrs["engine_model"]
    settings = {k: trained.attrs[k] for k in ("encoder", "weights_sha256", "input_size", "target_mpp", "patch_size")}
    seg = json.loads(trained.attrs["segment_params"])
    int8_ens = SimpleNamespace(encoder={**settings, "precision": "int8", "engine_model": key,
                                        "engine_model_sha256": trained.attrs["engine_model_sha256"]},
                               segment_params=seg)
    # predict into another --out: the model is found only where the cache is (GHANET_ENGINE_CACHE)
    new_out = tmp_path / "p"
    cfg = PredictConfig(out=new_out, weights="random", device="cpu", batch_size=4)
    with pytest.raises(ConfigError, match=f"{key} is not in the engine cache"):
        Embedder(int8_ens, cfg).embed(_specs(slides[1:])[0], {"segment": 0.0, "extract": 0.0})
    monkeypatch.setenv(C.CACHE_ENV, str(out / "engines"))
    emb = Embedder(int8_ens, cfg)
    got = emb.embed(_specs(slides[1:])[0], {"segment": 0.0, "extract": 0.0})
    assert got.attrs["precision"] == "int8" and got.attrs["engine_model"] == key
    np.testing.assert_array_equal(got.features, trained.features)  # the same model, the same patches
    # a model whose float operations were measured in bf16 (made on a bf16 CPU), run on this CPU without:
    # fp32, said once, and not silently
    rec_path = out / "engines" / key / "record.json"
    rec_path.write_text(json.dumps({**json.loads(rec_path.read_text()), "float_ops": "bf16"}))
    with caplog.at_level(logging.WARNING):
        moved = Embedder(int8_ens, cfg).embed(_specs(slides[1:])[0], {"segment": 0.0, "extract": 0.0})
    said = [r.getMessage() for r in caplog.records if "no bf16 instructions" in r.getMessage()]
    assert len(said) == 1 and key in said[0] and "compute in fp32" in said[0]
    np.testing.assert_array_equal(moved.features, trained.features)  # computed as the model was made here
    # a model trained on float bags predicts in fp32 even where auto could choose int8
    float_ens = SimpleNamespace(encoder=settings, segment_params=seg)
    got = Embedder(float_ens, PredictConfig(out=tmp_path / "q", weights="random", device="cpu", batch_size=4)
                   ).embed(_specs(slides[1:])[0], {"segment": 0.0, "extract": 0.0})
    assert got.attrs["precision"] == "fp32" and "engine_model" not in got.attrs


def test_check_precision_cli_reports_each_engine_against_torch(slides, tmp_path):
    from click.testing import CliRunner

    from ghanet_pipeline.cli import cli

    out = tmp_path / "o"
    args = ["check-precision", *map(str, slides), "--out", str(out), "--encoder", TINY, "--weights", "random",
            "--resize", str(SIZE), "--int8-patches", "8", "--patches", "4", "--no-bf16", "--threads", "1",
            "--json", str(tmp_path / "c.json")]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert (tmp_path / "c.json").is_file(), r.output
    report = json.loads((tmp_path / "c.json").read_text())
    assert r.exit_code == (0 if report["rows"]["openvino int8"]["passes_gate"] else 1), r.output
    assert set(report["rows"]) == {"openvino fp32", "openvino int8"} and report["patches"] == 4
    fp32, int8 = report["rows"]["openvino fp32"], report["rows"]["openvino int8"]
    assert fp32["error_spread"] < 1e-3 and fp32["passes_gate"]
    assert int8["error_spread"] > fp32["error_spread"] and -1 <= int8["cosine"]["p1"] <= int8["cosine"]["p50"] <= 1
    assert "openvino int8" in r.output and "error / spread" in r.output
    # the model it measured is the one extract-features --precision int8 then reuses
    res = _extract(slides, out, precision="int8", int8_patches=8)
    from ghanet_pipeline.features.bags import read_bag

    assert read_bag(res[0].metrics["bag"]).attrs["engine_model"] == report["int8_model"]


def test_check_precision_refuses_before_quantizing_when_no_patch_is_left_to_check_on(slides, tmp_path):
    """A small slide whose every patch goes into the int8 calibration sample: a clear error naming the fix,
    raised before the (minutes-long) quantization, not a traceback after it."""
    from ghanet_pipeline.features.engines.check import check_precision

    with pytest.raises(ConfigError, match=r"3 tissue patches .*\(--int8-patches 8\) takes 3 .* leaving 0 .*give more slides"):
        check_precision(_specs(slides[1:]), tmp_path / "o", encoder=TINY, weights="random", patches=4,
                        int8_patches=8, input_size=SIZE, bf16=False, threads=1)
    assert not (tmp_path / "o" / "engines").exists()


@pytest.mark.skipif(not runtime.cpu_info().has_bf16, reason="OpenVINO bf16 needs a CPU with bf16 instructions")
def test_check_precision_measures_both_bf16_engines_where_the_cpu_has_bf16(slides, tmp_path):
    from ghanet_pipeline.features.engines.check import check_precision

    res = check_precision(_specs(slides), tmp_path / "o", encoder=TINY, weights="random", patches=4, int8_patches=8,
              input_size=SIZE, bf16=True, threads=1)
    rows = res.rows
    assert {"torch bf16", "openvino bf16"} <= set(rows)
    for name in ("torch bf16", "openvino bf16"):  # bf16 round-off: not zero, far below the features' spread
        assert 0 < rows[name]["error_spread"] < 0.3, (name, rows[name])
    assert rows["openvino fp32"]["error_spread"] < rows["openvino bf16"]["error_spread"]


_SIGNAL_AFTER_TWO_MODELS = r"""
import gc, os, signal, sys
import numpy as np, openvino as ov, torch
from ghanet_pipeline.features.engines.openvino_runner import MODEL_XML, compile_ir
folder = sys.argv[1]
ov.save_model(ov.convert_model(torch.nn.Conv2d(3, 4, 3).eval(), example_input=torch.zeros(1, 3, 16, 16)),
              os.path.join(folder, MODEL_XML))
x = np.zeros((1, 3, 16, 16), np.float32)
first, second = compile_ir(folder, 1), compile_ir(folder, 1)
first(x), second(x)
del first; gc.collect()  # destroyed in the order they were made, not the reverse
del second; gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print("handler ran", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
print("survived", flush=True)
"""


@pytest.mark.slow  # starts a Python process that imports torch and OpenVINO
def test_signals_after_compiled_models_are_destroyed_out_of_order_reach_python(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack per compiled model; destroyed out of
    order they left a freed one behind, and the next Python signal handler segfaulted (engines.sigstack)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _SIGNAL_AFTER_TWO_MODELS, str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert res.stdout.split() == ["handler", "ran", "survived"]
