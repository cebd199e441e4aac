"""The engine of one extraction process: what runs the encoder for each input size, prepared once.

:class:`EngineSession` turns an :class:`.choice.EngineChoice` into runners (``runner(uint8 batch) ->
features``): the PyTorch runner (:class:`..fastpath.Runner`), or the OpenVINO model from the cache
(fp32: converted on first use per input size; int8: made by :meth:`EngineSession.prepare` from the
cohort, or named by ``engine_model`` when predict follows its training bags). An encoder that does not
convert falls back to PyTorch in the same float precision (int8: fp32) with one log line saying why; the bag then records what ran.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...core.errors import ConfigError, GhanetError, SlideError
from .choice import EngineChoice

if TYPE_CHECKING:  # pragma: no cover
    from ...wsi.inputs import SlideSpec
    from ..encoders import LoadedEncoder
    from .int8 import Recipe

log = logging.getLogger(__name__)


class EngineSession:
    """Runners for one encoder on one device (see module doc). ``torch_runner`` builds the PyTorch runner
    (called at most once); ``threads``: OpenVINO's compute threads (None = its default); ``engine_model``: a
    given int8 model key (predict, worker processes); ``input_size``: ``--resize``."""

    def __init__(self, choice: EngineChoice, encoder: LoadedEncoder, torch_runner: Callable[[], Any],
                 threads: int | None = None, engine_model: str | None = None,
                 input_size: int | None = None) -> None:
        self.choice = choice
        self.input_size_param = input_size  # --resize (None = the encoder's default or the patch size)
        self.encoder = encoder
        self.threads = threads
        self._make_torch = torch_runner
        self._torch: Any = None
        self._ov: dict[int, Any] = {}
        self.engine_model = engine_model  # int8 model key (set by prepare or given)
        self.record: dict[str, Any] | None = None  # its cache record
        self.notes: list[str] = []

    # -- what runs --------------------------------------------------------------------------------
    @property
    def engine(self) -> str:
        return self.choice.engine

    @property
    def precision(self) -> str:
        return "int8" if self.engine_model else (self.choice.fallback if self.choice.int8 else self.choice.precision)

    def bag_attrs(self) -> dict[str, Any]:
        """``engine``, ``precision`` and, for int8, the model's key and hash (see the package doc)."""
        attrs: dict[str, Any] = {"engine": self.engine, "precision": self.precision}
        if self.engine_model:
            attrs["engine_model"] = self.engine_model
            attrs["engine_model_sha256"] = str((self.record or {}).get("model_sha256", ""))
        return attrs

    def torch_runner(self) -> Any:
        if self._torch is None:
            self._torch = self._make_torch()
        return self._torch

    # -- preparing --------------------------------------------------------------------------------
    def prepare(self, cohort: Sequence[SlideSpec], out: Path, recipe: Recipe) -> None:
        """int8 (asked for, or auto): build or reuse the cohort's quantized model; under auto keep it only
        when it passed the fidelity gate, else run fp32 (log line either way). No-op otherwise."""
        if self.engine != "openvino" or self.engine_model or not self.choice.int8:
            return
        from . import int8
        from .cache import cache_root, get_or_build

        sample = int8.draw_sample(cohort, out, recipe.patches, recipe.seed)
        input_size = int(self._input_size(sample.patch_size))
        key = int8.model_key(self.encoder, input_size, recipe, sample.sha256)
        try:
            fp32 = self._fp32_entry(out, input_size)
            root = cache_root(out)
            entry = get_or_build(root, key, lambda tmp: int8.build(tmp, fp32.path, self.encoder, sample, input_size,
                                                                   recipe, self.threads))
        except GhanetError:
            raise
        except Exception as exc:  # noqa: BLE001 - any conversion/quantization failure: fall back, say why
            self._fall_back(f"int8 quantization of {self.encoder.name} failed ({type(exc).__name__}: {exc})")
            return
        fid = entry.record.get("fidelity")
        gate = "passed" if entry.record.get("passes_gate") else "did NOT pass"
        from .agreement import describe

        said = describe(fid) if fid else "no held-out patches"
        if self.choice.precision == "auto-int8" and not entry.record.get("passes_gate"):
            msg = (f"auto: int8 model {key} {gate} the fidelity gate on held-out patches ({said}); "
                   f"extracting in {self.choice.fallback}")
            log.warning(msg)
            self.notes.append(msg)
            self.choice = EngineChoice("openvino", self.choice.fallback, msg)
            return
        self.engine_model, self.record = key, entry.record
        from .int8 import make_up

        mix = make_up(entry.record)
        msg = (f"int8 model {key} ({'built' if entry.built else 'cached'}; {mix + '; ' if mix else ''}held-out "
               f"fidelity {said}: {gate} the gate)")
        if self.choice.precision == "auto-int8":
            msg = "auto chose int8: " + msg
        log.info(msg)
        if not entry.record.get("passes_gate"):
            self.notes.append(msg)

    def _input_size(self, patch_size: int) -> int:
        return int(self.input_size_param or self.encoder.spec.default_input_size or patch_size)

    def _fp32_entry(self, out: Path, input_size: int) -> Any:
        from . import openvino_runner as ovr
        from .cache import cache_root, get_or_build

        key = f"{self.encoder.name}_{input_size}_fp32_{_weights_tag(self.encoder.weights_id)}"
        return get_or_build(cache_root(out), key, lambda tmp: {
            "precision": "fp32", "encoder": self.encoder.name, "weights_sha256": self.encoder.weights_id,
            "input_size": int(input_size), **ovr.save_ir(ovr.convert(self.encoder, input_size), tmp)})

    # -- running ----------------------------------------------------------------------------------
    def runner(self, input_size: int, out: Path) -> Any:
        """The runner for ``input_size`` px patches (built on first use; see module doc)."""
        if self.engine == "torch":
            return self.torch_runner()
        if input_size in self._ov:
            return self._ov[input_size]
        from . import openvino_runner as ovr

        if self.engine_model:
            entry = self._int8_entry(out)
            if int(entry.record.get("input_size", -1)) != int(input_size):
                raise SlideError(f"the int8 model {self.engine_model} was made for {entry.record.get('input_size')} px "
                                 f"input, this slide gives {input_size} px patches; one int8 model serves one input "
                                 f"size (segment the slides with one --patch-size)")
            from .int8 import float_ops  # its float operations: fp32, or bf16 where the model chose it and the CPU has it

            ops = float_ops(entry.record)
            if entry.record.get("float_ops", "fp32") != ops:
                msg = (f"int8 model {self.engine_model}: its float operations were measured in "
                       f"{entry.record.get('float_ops')}, and this CPU has no bf16 instructions: they compute in {ops} "
                       f"(closer to fp32 than the bags made with it, by bf16 round-off)")
                log.warning(msg)
                self.notes.append(msg)
            self._ov[input_size] = ovr.OpenVinoRunner(ovr.compile_ir(entry.path, self.threads, ops))
            return self._ov[input_size]
        try:
            entry = self._fp32_entry(out, input_size)  # bf16: the fp32 model, computed in bf16 by the plugin
            self._ov[input_size] = ovr.OpenVinoRunner(ovr.compile_ir(entry.path, self.threads, self.precision))
        except GhanetError:
            raise
        except Exception as exc:  # noqa: BLE001 - the encoder did not convert: PyTorch runs it
            self._fall_back(f"{self.encoder.name} did not convert to OpenVINO ({type(exc).__name__}: {exc})")
            return self.torch_runner()
        return self._ov[input_size]

    def fp32_runner(self, input_size: int, out: Path, precision: str = "fp32") -> Any:
        """The OpenVINO runner of the float model for ``input_size`` computing in ``precision`` (fp32, or bf16 on
        CPUs with bf16 instructions), whatever this session runs; for comparisons."""
        from . import openvino_runner as ovr

        return ovr.OpenVinoRunner(ovr.compile_ir(self._fp32_entry(out, input_size).path, self.threads, precision))

    def _int8_entry(self, out: Path) -> Any:
        from .cache import cache_root, read_entry

        root = cache_root(out)
        entry = read_entry(root, str(self.engine_model))
        if entry is None:
            raise ConfigError(f"the int8 encoder model {self.engine_model} is not in the engine cache {root}; it is made "
                              f"by 'ghanet extract-features --precision int8' under the --out of the cohort's extraction "
                              f"(<out>/engines/). Use that --out, or point GHANET_ENGINE_CACHE at that engines folder")
        self.record = entry.record
        return entry

    def _fall_back(self, why: str) -> None:
        """PyTorch runs the encoder from now on, in the float precision OpenVINO was to run (int8: fp32)."""
        precision = "fp32" if self.precision == "int8" else self.precision
        msg = f"engine openvino: {why}; PyTorch runs the encoder in {precision}"
        log.warning(msg)
        self.notes.append(msg)
        self.choice = EngineChoice("torch", precision, msg)
        self.engine_model = None


def _weights_tag(weights_id: str) -> str:
    text = str(weights_id)
    return "random" + text.partition(":")[2] if text.startswith("random") else text[:16]
