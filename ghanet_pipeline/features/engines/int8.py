"""int8 encoders: post-training quantization (NNCF) of the converted encoder, calibrated on the cohort's
own patches, made once per cohort and cached.

The calibration sample is drawn from the slides' patch grids (``<out>/segment``), seeded and
stratified: every slide gives an equal share (a slide with fewer patches gives all it has, the rest is
spread over the others), so one large slide does not set the activation ranges for the cohort. The
patches are read by the extraction's own reader (same pixels, same resize). A part of the sample
(``holdout``) is kept out of the calibration and used for the fidelity gate: fp32 and int8 features of
those patches are compared (:mod:`.agreement`) and the figures go into the model's record.

The recipe (:class:`Recipe`) holds the settings measured to keep int8 features faithful (see
docs/fidelity.md for the table of what each technique did on a real slide). The model's cache key hashes
the weights id, input size, recipe, the library versions and the exact sample (slide ids, file sizes,
patch coordinates), so the same cohort and settings give the same key in every process (shards and
``--devices`` share one model) and any change makes a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.errors import ConfigError, GhanetError
from .agreement import MAX_ERROR_SPREAD, agreement, describe, passes, spread_rms
from .sigstack import kept_signal_stack

if TYPE_CHECKING:  # pragma: no cover
    from ...wsi.inputs import SlideSpec
    from ..encoders import LoadedEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How the int8 model is made. ``patches``: calibration sample size (``holdout`` of them are kept for
    the fidelity gate); ``seed``: the draw; ``preset``: NNCF preset (``mixed``: asymmetric activations,
    ``performance``: symmetric); ``bias_correction``: ``full`` (NNCF BiasCorrection, layer by layer on
    the quantized model's own activations) or ``fast``; ``fp32_convs``: convolutions not quantized (float, see ``float_ops``), by
    position (0 = first; negative from the end); ``ranges``: how activation ranges are set from the
    calibration statistics (``minmax``: NNCF's default, the mean over samples of each sample's min/max;
    ``quantile``: the same with the 1e-4 / 1 - 1e-4 quantiles; ``histogram``: the range that minimises the
    quantization error of a histogram of the values); ``channel_alignment``: NNCF's channel alignment
    (rescales channels between consecutive convolutions so that per-tensor activation scales fit every
    channel). ``max_error``: accuracy control (NNCF ``quantize_with_accuracy_control``): after quantizing, the
    operations whose int8 arithmetic moves the features most are put back to float, one at a time, until the
    error relative to the spread across patches (:mod:`.agreement`) on ``validation`` patches of the sample
    (neither calibration nor holdout) is at most ``max_error``; ``None``: plain post-training quantization.
    Where plain int8 already meets it (weights whose features differ clearly between patches), nothing goes
    back to fp32. ``float_ops``: what the operations that are not int8 (those put back, the first convolution,
    pooling) compute in: ``fp32``, or ``bf16`` (CPUs with bf16 instructions, :meth:`for_this_cpu`): then bf16's
    own error on the validation patches is taken out of accuracy control's budget (errors add in quadrature),
    and the model keeps bf16 only if its held-out figures under bf16 pass the gate, else its float operations
    compute in fp32 (see :func:`build`)."""

    patches: int = 512
    seed: int = 0
    holdout: int = 64
    validation: int = 96
    max_error: float | None = MAX_ERROR_SPREAD
    preset: str = "performance"
    bias_correction: str = "fast"
    fp32_convs: tuple[int, ...] = (0,)  # measured help (docs/fidelity.md); full bias correction: 3x the time for ~0
    ranges: str = "histogram"  # measured help; ~7x the quantization time of min/max (once per cohort)
    channel_alignment: bool = False
    float_ops: str = "fp32"

    @classmethod
    def for_this_cpu(cls, **kw: Any) -> Recipe:
        """The recipe with ``float_ops`` bf16 where this CPU computes bf16 in hardware, else fp32."""
        from .choice import native_bf16

        return cls(**kw, float_ops="bf16" if native_bf16() else "fp32")

    def as_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "fp32_convs": list(self.fp32_convs)}
        if self.float_ops == "fp32":  # as before float_ops existed: those models keep their cache keys
            del d["float_ops"]
        return d


# --------------------------------------------------------------------------- the sample


def stratified_selection(counts: Sequence[int], n: int, seed: int) -> list[tuple[int, int]]:
    """``(slide index, row)`` pairs: ``n`` patches spread as evenly as possible over slides with
    ``counts[i]`` patches each (water-filling), rows drawn without replacement, seeded; sorted."""
    counts = [int(c) for c in counts]
    n = min(int(n), sum(counts))
    share = [0] * len(counts)
    left = n
    open_ = [i for i, c in enumerate(counts) if c > 0]
    while left > 0 and open_:
        each, extra = divmod(left, len(open_))
        for k, i in enumerate(open_):
            share[i] += min(each + (1 if k < extra else 0), counts[i] - share[i])
        left = n - sum(share)
        open_ = [i for i in open_ if share[i] < counts[i]]
    rng = np.random.default_rng(seed)
    picked: list[tuple[int, int]] = []
    for i, k in enumerate(share):
        if k:
            rows = np.sort(rng.choice(counts[i], size=k, replace=False))
            picked += [(i, int(r)) for r in rows]
    return picked


@dataclass
class Sample:
    """The cohort's calibration sample: which patches (``slides``, ``rows``), their grids and its id."""

    specs: list[SlideSpec]
    grids: list[tuple[np.ndarray, dict[str, Any]]]  # (coords, coords attrs) per slide
    picked: list[tuple[int, int]]
    sha256: str

    @property
    def patch_size(self) -> int:
        return int(self.grids[0][1]["patch_size"])


def draw_sample(specs: Sequence[SlideSpec], out: Path, n: int, seed: int) -> Sample:
    """The stratified sample of ``specs``' patch grids (segmented with defaults when missing)."""
    from ..coords import slide_coords

    grids = [slide_coords(s, out)[:2] for s in specs]
    sizes = {int(a["patch_size"]) for _, a in grids}
    if len(sizes) > 1:
        raise ConfigError(f"the slides' patch grids use different patch sizes {sorted(sizes)}; one int8 model "
                          f"serves one input size: segment them with one --patch-size")
    picked = stratified_selection([len(c) for c, _ in grids], n, seed)
    if not picked:
        raise GhanetError("no tissue patches in the given slides: nothing to calibrate the int8 encoder on")
    h = hashlib.sha256()
    for si, row in picked:
        spec, (coords, attrs) = specs[si], grids[si]
        h.update(f"{spec.slide_id}|{attrs.get('source_bytes')}|{coords[row, 0]}|{coords[row, 1]}\n".encode())
    return Sample(list(specs), grids, picked, h.hexdigest())


def read_sample(sample: Sample, input_size: int, batch_size: int = 32) -> np.ndarray:
    """The sample's patches as uint8 ``(n, input_size, input_size, 3)``, read as extraction reads them,
    in a seeded random order (calibration and holdout both span the cohort)."""
    from ...core.errors import SlideError
    from ...wsi.slide import Slide
    from ..loader import PatchBatches

    parts = []
    for si in sorted({si for si, _ in sample.picked}):
        spec, (coords, attrs) = sample.specs[si], sample.grids[si]
        rows = [r for s, r in sample.picked if s == si]
        with Slide(spec.path, mpp=spec.mpp, slide_id=spec.slide_id) as slide:
            plan = slide.plan(float(attrs["target_mpp"]), int(attrs["patch_size"]))
        data = PatchBatches(spec.path, spec.slide_id, spec.mpp, plan, coords[rows], batch_size, input_size)
        try:
            for i in range(len(data)):
                _, batch = data[i]
                if isinstance(batch, str):
                    raise SlideError(batch)
                parts.append(batch.numpy())
        finally:
            data.close()
    arr = np.concatenate(parts)
    return arr[np.random.default_rng(0).permutation(len(arr))]


# --------------------------------------------------------------------------- the model


def model_key(encoder: LoadedEncoder, input_size: int, recipe: Recipe, sample_sha256: str) -> str:
    """Cache key ``<encoder>_<input>_int8_<hash16>`` of the int8 model (see module doc)."""
    from importlib.metadata import version

    import openvino as ov

    text = json.dumps({"weights": encoder.weights_id, "encoder": encoder.name, "input_size": int(input_size),
                       "recipe": recipe.as_dict(), "sample": sample_sha256, "nncf": version("nncf"),
                       "openvino": ov.__version__.split("-")[0]}, sort_keys=True)
    return f"{encoder.name}_{int(input_size)}_int8_{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def quantize(fp32_model: Any, patches: np.ndarray, recipe: Recipe, validation: np.ndarray | None = None) -> Any:
    """The NNCF-quantized ``fp32_model`` calibrated on ``patches`` (uint8 NHWC), per ``recipe``; with
    ``recipe.max_error`` and 3 or more ``validation`` patches, accuracy-controlled (see :class:`Recipe`)."""
    import nncf

    convs = [op.get_friendly_name() for op in fp32_model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    keep = sorted({convs[i] for i in recipe.fp32_convs if -len(convs) <= i < len(convs)})
    preset = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}[recipe.preset]
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet as Ranges

    advanced = AdvancedQuantizationParameters(disable_channel_alignment=not recipe.channel_alignment)
    if recipe.ranges != "minmax":
        advanced.activations_range_estimator_params = {"quantile": Ranges.MEAN_QUANTILE,
                                                       "histogram": Ranges.HISTOGRAM}[recipe.ranges]
    data = nncf.Dataset([patches[i:i + 1] for i in range(len(patches))])
    common = dict(subset_size=len(patches), preset=preset, fast_bias_correction=recipe.bias_correction == "fast",
                  ignored_scope=nncf.IgnoredScope(names=keep) if keep else None)
    with kept_signal_stack():  # NNCF compiles models to collect statistics (see .sigstack)
        if recipe.max_error is None or validation is None or len(validation) < 3:
            return nncf.quantize(fp32_model, data, advanced_parameters=advanced, **common)
        # items are positions: NNCF hands validation_fn the items as they are, the model their transform
        val = nncf.Dataset(list(range(len(validation))), lambda i: validation[i:i + 1])
        return nncf.quantize_with_accuracy_control(
            fp32_model, data, val, _fidelity_metric(fp32_model, validation), max_drop=float(recipe.max_error),
            drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=advanced, **common)


def _fidelity_metric(fp32_model: Any, patches: np.ndarray) -> Any:
    """NNCF validation function over ``patches``: ``1 - error / spread`` against ``fp32_model``'s features
    (1 for the fp32 model itself, so NNCF's accuracy drop is the error relative to the spread), and per patch
    ``1 - its RMS error / spread`` (NNCF ranks the operations on those)."""
    import openvino as ov

    from .openvino_runner import run_compiled

    core = ov.Core()
    # fp32 float operations: bf16's share of the budget is taken out of max_error beforehand (build)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    ref = run_compiled(core.compile_model(fp32_model, "CPU", config), patches).astype(np.float64)
    spread = max(spread_rms(ref), 1e-12)  # of all validation patches: one scale for every subset NNCF scores

    def metric(model: Any, positions: Any) -> tuple[float, list[float]]:
        idx = np.fromiter(positions, dtype=int)
        compiled = model if isinstance(model, ov.CompiledModel) else core.compile_model(model, "CPU", config)
        err = np.sqrt(((run_compiled(compiled, patches[idx]) - ref[idx]) ** 2).mean(axis=1))
        return float(1.0 - np.sqrt((err ** 2).mean()) / spread), [float(1.0 - e / spread) for e in err]

    return metric


def int8_share(model: Any) -> tuple[int, int]:
    """``(convolutions that run in int8, all convolutions)`` of a quantized model: a convolution runs in int8
    where its input comes through a FakeQuantize."""
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    quantized = [op for op in convs if op.input_value(0).get_node().get_type_name() == "FakeQuantize"]
    return len(quantized), len(convs)


def build(folder: Path, fp32_folder: Path, encoder: LoadedEncoder, sample: Sample, input_size: int,
          recipe: Recipe, threads: int | None) -> dict[str, Any]:
    """Make the int8 IR in ``folder`` from the fp32 IR in ``fp32_folder`` (a cache ``build`` callback):
    read the sample, quantize on all but the holdout, measure the holdout; returns the record.

    With ``recipe.float_ops`` bf16: bf16's error alone (the fp32 model computed in bf16) is measured on the
    validation patches; if it is at most half the budget, accuracy control aims at
    ``sqrt(max_error**2 - bf16_error**2)``, else the float operations stay fp32. The record's ``float_ops`` is
    bf16 only when the held-out figures computed that way pass the gate (``fidelity``: the figures of what
    runs; ``fidelity_fp32_ops``: the same model with fp32 float operations, for comparison)."""
    import openvino as ov

    from .openvino_runner import MODEL_XML, ir_sha256

    patches = read_sample(sample, input_size)
    hold = min(recipe.holdout, len(patches) // 4)
    n_val = min(recipe.validation, len(patches) // 4) if recipe.max_error is not None else 0
    n_val = n_val if n_val >= 3 else 0  # fewer cannot measure a spread: plain quantization
    held, val, calib = patches[:hold], patches[hold:hold + n_val], patches[hold + n_val:]
    bf16 = recipe.float_ops == "bf16" and hold >= 3  # bf16 is kept only where the holdout can check it
    notes: list[str] = []
    bf16, target, bf16_alone = _bf16_budget(bf16, fp32_folder, val, recipe.max_error, threads, notes)
    log.info("int8: quantizing %s on %d patches of %d slides (%d held out for the fidelity check%s)",
             encoder.name, len(calib), len({s for s, _ in sample.picked}), hold,
             f", {n_val} for accuracy control to error <= {target:.3f} of the spread" if n_val else "")
    fp32_model = ov.Core().read_model(str(Path(fp32_folder) / MODEL_XML))
    q = quantize(fp32_model, calib, replace(recipe, max_error=target), validation=val)
    kept, total = int8_share(q)
    ov.save_model(q, str(Path(folder) / MODEL_XML), compress_to_fp16=False)
    figures, fp32_ops, bf16 = _held_out(folder, fp32_folder, held, bf16, threads, notes)
    ops = "bf16" if bf16 else "fp32"
    log.info("int8: %d of %d convolutions run in int8 (the others in %s)", kept, total, ops)
    for note in notes:
        log.info("int8: %s", note)
    record = {"precision": "int8", "encoder": encoder.name, "weights_sha256": encoder.weights_id,
              "input_size": int(input_size), "recipe": recipe.as_dict(),
              "sample": {"sha256": sample.sha256, "slides": len({s for s, _ in sample.picked}),
                         "slides_given": len(sample.specs), "patches": len(calib), "holdout": hold,
                         "validation": n_val},
              "int8_convolutions": kept, "convolutions": total, "float_ops": ops,
              "accuracy_target": target, "bf16_alone": bf16_alone, "notes": notes,
              "fidelity": figures, "fidelity_fp32_ops": fp32_ops,
              "passes_gate": bool(figures is not None and passes(figures)),
              "model_sha256": ir_sha256(folder), "openvino_version": ov.__version__}
    if figures is not None:
        log.info("int8: held-out fidelity vs fp32: %s (%s)", describe(figures),
                 "passes" if record["passes_gate"] else "FAILS the gate")
    return record


def _bf16_budget(bf16: bool, fp32_folder: Path, val: np.ndarray, max_error: float | None, threads: int | None,
                 notes: list[str]) -> tuple[bool, float | None, dict[str, Any] | None]:
    """``(bf16 still planned, accuracy control's target, bf16's own figures on val)``: bf16 (the fp32 model
    computed in bf16) within half of ``max_error`` leaves ``sqrt(max_error**2 - its error**2)`` to int8."""
    from .openvino_runner import compile_ir, run_compiled

    if not (bf16 and len(val) and max_error is not None):
        return bf16, max_error, None
    ref = run_compiled(compile_ir(fp32_folder, threads), val)
    alone = agreement(ref, run_compiled(compile_ir(fp32_folder, threads, "bf16"), val))
    if alone["error_spread"] <= 0.5 * max_error:
        return True, float(np.sqrt(max_error ** 2 - alone["error_spread"] ** 2)), alone
    notes.append(f"bf16 alone moves the validation features by {alone['error_spread']:.3f} of the spread "
                 f"(more than half the budget {max_error}): the float operations compute in fp32")
    return False, max_error, alone


def _held_out(folder: Path, fp32_folder: Path, held: np.ndarray, bf16: bool, threads: int | None,
              notes: list[str]) -> tuple[dict[str, Any] | None, dict[str, Any] | None, bool]:
    """``(figures of what runs, figures with fp32 float operations, bf16 kept)`` on the ``held`` patches
    (None figures below 3 patches); bf16 is kept only where its figures pass the gate."""
    from .openvino_runner import compile_ir, run_compiled

    if len(held) < 3:
        return None, None, bf16
    ref = run_compiled(compile_ir(fp32_folder, threads), held)
    fp32_ops = agreement(ref, run_compiled(compile_ir(folder, threads), held))
    if not bf16:
        return fp32_ops, fp32_ops, False
    with_bf16 = agreement(ref, run_compiled(compile_ir(folder, threads, "bf16"), held))
    if passes(with_bf16):
        return with_bf16, fp32_ops, True
    notes.append(f"held out with bf16 float operations: {describe(with_bf16)}, over the gate: they compute in fp32")
    return fp32_ops, fp32_ops, False


def make_up(record: dict[str, Any]) -> str:
    """``N of M convolutions in int8, the rest in bf16|fp32`` (as this CPU runs it); empty for a record
    without those figures."""
    if "convolutions" not in record:
        return ""
    return f"{record['int8_convolutions']} of {record['convolutions']} convolutions in int8, the rest in {float_ops(record)}"


def float_ops(record: dict[str, Any]) -> str:
    """What the int8 model of ``record`` computes its float operations in on this CPU: the record's choice,
    except fp32 where this CPU has no bf16 instructions (a model made on another machine)."""
    from .choice import native_bf16

    return "bf16" if record.get("float_ops") == "bf16" and native_bf16() else "fp32"
