"""Patch features: read every patch of a slide's grid, embed it, write the bag.

Data path (per slide)::

    coords (segment) -> DataLoader workers, each with its own Slide handle, read + decode a whole
    batch of patches as one uint8 (B, H, W, 3) tensor -> (pinned) -> device -> normalise there
    (uint8 crosses the bus, 4x fewer bytes than float) -> channels_last -> autocast -> encoder
    -> float32/float16 rows written into the bag while the next batch is computed.

The order of patches is the coords order and the model is in eval mode, so a rerun gives the same
bag (killed runs leave only a hidden temp file, removed on the next run). Multi-GPU:
:func:`extract_slides` with several devices starts one process per device; they pull slides from
one shared queue.

Units: coords are level-0 pixels (top-left x, y); ``patch_size`` is pixels at ``target_mpp`` um/px;
``input_size`` is the side in pixels given to the encoder (area-resized from ``patch_size``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..core.errors import ConfigError, MismatchError, SlideError
from ..core.files import remove_stale_temps
from ..core.ids import safe_child
from ..core.runs import ItemResult, run_items, write_run_log
from ..env.device import resolve_device
from ..env.runtime import bf16_cpu_warning, cpu_cores, default_num_workers, dtype_of, tune_malloc
from ..wsi.inputs import SlideSpec
from .bags import BAG_SCHEMA_VERSION, BagWriter, encoder_tag, read_bag_attrs
from .coords import segment_params_json, slide_coords
from .engines.choice import resolve_engine
from .engines.session import EngineSession
from .fastpath import Runner
from .loader import PatchBatches, ThreadReader, reader_context, worker_init
from .multidevice import extract_multi
from .registry import DEFAULT_ENCODER
from .reuse import reuse_problem

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .encoders import LoadedEncoder

log = logging.getLogger(__name__)


@dataclass
class ExtractParams:
    """Settings of ``extract-features`` (defaults = the CLI defaults).

    ``input_size``: side in px fed to the encoder (None = the segment patch size, 256; 224 reproduces
    later CLAM versions). ``precision``: ``auto`` = bf16 autocast on CUDA (fp16 where bf16 is not
    supported); on CPU bf16 where the CPU has AMX-BF16, else fp32 (:func:`.runtime.resolve_precision`);
    ``bf16`` on a CPU without bf16 instructions is emulated (slow) and warned about. ``dtype``: how
    features are stored. ``num_workers``: reader processes per device (None = auto: all but one core
    per GPU process on CUDA; on CPU 0 below 8 cores, else one per 8 cores). ``torch_threads``: CPU
    compute threads (None = the cores not used by readers). ``reader_thread``: with 0 reader processes,
    read the next batch on a background thread while the current one is encoded (False = in the main
    thread between batches). ``raw_tiles``: decode patches that are whole JPEG tiles straight from the
    file (same pixels as OpenSlide; False = always OpenSlide). ``engine``: ``auto`` | ``torch`` |
    ``openvino`` (:mod:`.engines.choice`); ``precision`` ``int8`` quantizes the encoder on a sample of
    ``int8_patches`` patches of the cohort (seed ``int8_seed``, :mod:`.engines.int8`); ``engine_model``: an
    int8 model key to use as it is (predict following its training bags; worker processes);
    ``int8_auto``: may ``precision auto`` choose int8 (False for predict, which follows its bags).
    """

    encoder: str = DEFAULT_ENCODER
    weights: str | None = None
    input_size: int | None = None
    batch_size: int = 64
    num_workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "float32"
    chunk_rows: int = 1024
    torch_threads: int | None = None
    prefetch_batches: int = 4
    reader_thread: bool = True
    raw_tiles: bool = True
    engine: str = "auto"
    engine_model: str | None = None
    int8_patches: int = 512
    int8_seed: int = 0
    int8_auto: bool = True


# --------------------------------------------------------------------------- one process = one device


class Extractor:
    """Encoder on one device plus the settings to turn slides into bags (one per process)."""

    def __init__(self, params: ExtractParams, device: str | None = None, n_devices: int = 1,
                 encoder: LoadedEncoder | None = None) -> None:
        import torch

        from .encoders import load_encoder

        if params.dtype not in ("float32", "float16"):
            raise ConfigError(f"--dtype must be float32 or float16, not {params.dtype!r}")
        self.params = params
        self.device = resolve_device(device or params.device)
        choice = resolve_engine(params.engine, params.precision, self.device, int8_auto=params.int8_auto)
        # what computes the float bags: PyTorch (autocast below) or OpenVINO (fp32, or bf16 on CPUs with bf16
        # instructions); int8 starts as fp32 until its model is ready (the bag's attr comes from the engine)
        self.precision, self.precision_reason = (choice.fallback if choice.int8 else choice.precision), choice.reason
        self.notes: list[str] = []
        if self.device.type == "cpu" and self.precision == "bf16":
            warning = bf16_cpu_warning()
            if warning:
                log.warning(warning)
                self.notes.append(warning)
        if self.device.type == "cpu":
            tune_malloc()
            threads = params.torch_threads
            if threads is None and params.num_workers is None:  # leave the readers their cores
                threads = max(1, cpu_cores() - default_num_workers(self.device, n_devices))
            if threads:
                torch.set_num_threads(int(threads))
            threads = int(threads or torch.get_num_threads())
        else:
            torch.backends.cudnn.benchmark = False  # same algorithms every run: identical bags
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.num_workers = (default_num_workers(self.device, n_devices) if params.num_workers is None
                            else int(params.num_workers))
        self.encoder = encoder or load_encoder(params.encoder, params.weights)
        self.model = self.encoder.model.to(self.device, memory_format=torch.channels_last).eval()
        self.engine = EngineSession(choice, self.encoder, lambda: Runner(self.model, self.encoder.spec, self.device),
                                    threads if self.device.type == "cpu" else None, params.engine_model,
                                    params.input_size)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the PyTorch runner: the precision the engine session runs in when PyTorch runs
        the encoder (chosen, or fallen back to after an OpenVINO failure), else None."""
        return dtype_of(self.engine.precision) if self.engine.engine == "torch" else None

    @property
    def runner(self) -> Runner:
        """The PyTorch runner (the torch engine; what the OpenVINO engines are compared with)."""
        return self.engine.torch_runner()

    def prepare(self, cohort: Sequence[SlideSpec], out: Path) -> None:
        """int8: make or reuse the cohort's quantized encoder (once, before the slides; see engines.int8)."""
        from .engines.int8 import Recipe

        self.engine.prepare(cohort, Path(out), Recipe.for_this_cpu(patches=self.params.int8_patches, seed=self.params.int8_seed))
        self.notes += self.engine.notes

    # -- paths ----------------------------------------------------------------------------------------
    def input_size(self, patch_size: int) -> int:
        from .encoders import encoder_input_size

        return encoder_input_size(self.encoder.name, patch_size, self.params.input_size)

    def bag_dir(self, out: Path, patch_size: int) -> Path:
        tag = encoder_tag(self.encoder.name, self.input_size(patch_size), self.encoder.weights_id,
                          int8=self.engine.precision == "int8")
        return safe_child(out, "features", tag)

    # -- one slide ------------------------------------------------------------------------------------
    def extract(self, spec: SlideSpec, out: Path, overwrite: bool = False,
                on_batch: Callable[[int, int], None] | None = None) -> ItemResult:
        """Write ``<out>/features/<encoder_tag>/<slide_id>.h5`` for one slide (see module doc)."""
        t0 = time.perf_counter()
        out = Path(out)
        coords, cattrs, segmented = slide_coords(spec, out)
        patch_size = int(cattrs["patch_size"])
        input_size = self.input_size(patch_size)
        runner = self.engine.runner(input_size, out)  # may fall back to torch: before the bag's name and attrs
        bag_path = self.bag_dir(out, patch_size) / f"{spec.slide_id}.h5"
        attrs = self._bag_attrs(spec, cattrs, input_size, len(coords))
        note = "coords made now by segment (defaults)" if segmented else ""
        if bag_path.exists() and not overwrite:
            reason = reuse_problem(bag_path, attrs, coords,
                               check_precision=self.params.precision != "auto")
            if reason is None:
                return ItemResult(spec.slide_id, "skipped", 0.0, "valid bag exists",
                                  {"patches": len(coords), "precision": read_bag_attrs(bag_path).get("precision", ""),
                                   "bag": str(bag_path)})
            log.info("slide %s: existing bag %s is not usable (%s); extracting again", spec.slide_id,
                     bag_path, reason)
        plan = self._plan(spec, cattrs)
        remove_stale_temps(bag_path.parent, [bag_path.name])  # this slide's leftovers only (parallel-job safe)
        self._run(spec, plan, coords, input_size, bag_path, attrs, on_batch, runner)
        secs = time.perf_counter() - t0
        status = "done" if len(coords) else "no tissue"
        note = "; ".join(n for n in [note, *self.notes] if n)
        return ItemResult(spec.slide_id, status, round(secs, 3), note,
                          {"patches": len(coords), "patches_per_s": round(len(coords) / max(secs, 1e-9), 2),
                           "precision": attrs["precision"], "engine": attrs["engine"], "bag": str(bag_path)})

    def _bag_attrs(self, spec: SlideSpec, cattrs: dict[str, Any], input_size: int, n: int) -> dict[str, Any]:
        return {
            "schema_version": BAG_SCHEMA_VERSION,
            "slide_id": spec.slide_id,
            "encoder": self.encoder.name,
            "weights_sha256": self.encoder.weights_id,
            "input_size": int(input_size),
            "target_mpp": float(cattrs["target_mpp"]),
            "patch_size": int(cattrs["patch_size"]),
            "patch_size_level0": int(cattrs["patch_size_level0"]),
            "level0_mpp": float(cattrs["level0_mpp"]),
            "mpp_source": str(cattrs.get("mpp_source", "")),
            "source_name": str(cattrs.get("source_name", spec.path.name)),
            "source_bytes": int(cattrs.get("source_bytes", -1)),
            "ghanet_version": __version__,
            "feature_dim": int(self.encoder.dim),
            "dtype": self.params.dtype,
            "precision": self.precision,
            **self.engine.bag_attrs(),  # engine, precision (int8 included), int8 model key and hash
            "resize": "none" if input_size == int(cattrs["patch_size"]) else "area",
            "n_patches": int(n),
            "segment_params": segment_params_json(cattrs),
            # provenance of a calibrated encoder (features/calibrate.py); its sha256 is weights_sha256
            **({"encoder_calibration": self.encoder.calibration} if self.encoder.calibration else {}),
        }

    def _plan(self, spec: SlideSpec, cattrs: dict[str, Any]) -> Any:
        from ..wsi.slide import Slide

        with Slide(spec.path, mpp=spec.mpp, slide_id=spec.slide_id) as slide:
            plan = slide.plan(float(cattrs["target_mpp"]), int(cattrs["patch_size"]))
            if plan.patch_size_level0 != int(cattrs["patch_size_level0"]):
                raise MismatchError(
                    f"slide {spec.slide_id!r}: its patch grid was made with patches of "
                    f"{cattrs['patch_size_level0']} level-0 px (at {cattrs.get('level0_mpp')} um/px) but the slide "
                    f"now reads as {plan.patch_size_level0} px ({slide.mpp:.4g} um/px from {slide.mpp_source}); "
                    f"use the same --mpp as for segment, or rerun 'ghanet segment --overwrite'")
        return plan

    def _run(self, spec: SlideSpec, plan: Any, coords: np.ndarray, input_size: int, bag_path: Path,
             attrs: dict[str, Any], on_batch: Callable[[int, int], None] | None, runner: Any = None) -> None:
        import torch
        from torch.utils.data import DataLoader

        p = self.params
        runner = runner or self.runner
        cuda = self.device.type == "cuda"
        data = PatchBatches(spec.path, spec.slide_id, spec.mpp, plan, coords, p.batch_size, input_size,
                            raw_tiles=p.raw_tiles)
        workers = min(self.num_workers, len(data))
        loader: Any
        if workers:
            loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=workers, pin_memory=cuda,
                                worker_init_fn=worker_init, prefetch_factor=max(1, p.prefetch_batches // workers + 1),
                                persistent_workers=False,
                                multiprocessing_context=reader_context(fork_safe=self.engine.engine == "torch"))
        elif p.reader_thread and len(data) > 1:
            loader = ThreadReader(data, depth=max(1, min(2, p.prefetch_batches)), pin_memory=cuda)
        else:
            loader = (data[i] for i in range(len(data)))
        amp_dtype = self.amp_dtype
        amp = torch.autocast(self.device.type, dtype=amp_dtype) if amp_dtype is not None else _null_ctx()
        done = 0
        pending: tuple[int, Any] | None = None  # (batch index, device tensor) computed but not yet written

        def flush(item: tuple[int, Any]) -> None:
            nonlocal done
            bi, feats_dev = item
            feats = feats_dev.float().cpu().numpy()
            start = bi * p.batch_size
            block = coords[start:start + len(feats)]
            bad = ~np.isfinite(feats).all(axis=1)
            if bad.any():
                x0, y0 = block[int(np.flatnonzero(bad)[0])]
                raise SlideError(f"slide {spec.slide_id!r}: the encoder gave non-finite features for the patch at "
                                 f"level-0 (x={x0}, y={y0}) ({int(bad.sum())} patches in all); try --precision fp32")
            writer.write(start, feats, block)
            done += len(feats)
            if on_batch is not None:
                on_batch(done, len(coords))

        try:
            with BagWriter(bag_path, len(coords), self.encoder.dim, attrs, dtype=p.dtype,
                           chunk_rows=p.chunk_rows) as writer, torch.inference_mode(), amp:
                for bi, batch in loader:
                    if isinstance(batch, str):
                        raise SlideError(batch)
                    x = batch.to(self.device, non_blocking=cuda)
                    feats_dev = runner(x)
                    if pending is not None:  # write the previous batch while this one computes (CUDA)
                        flush(pending)
                    pending = (bi, feats_dev)
                if pending is not None:
                    flush(pending)
        finally:
            if isinstance(loader, ThreadReader):
                loader.close()
            data.close()


class _null_ctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --------------------------------------------------------------------------- many slides


def extract_slides(specs: Sequence[SlideSpec], out: Path | str, params: ExtractParams,
                   devices: Sequence[str] | None = None, overwrite: bool = False,
                   on_done: Callable[[ItemResult], None] | None = None,
                   log_config: Mapping[str, Any] | None = None,
                   cohort: Sequence[SlideSpec] | None = None) -> list[ItemResult]:
    """Extract bags for ``specs``; a failing slide is recorded and the others go on.

    Writes the stage's run log (``<out>/logs/extract-features-*.json``: settings, ``log_config`` extras
    such as the shard, per-slide status).

    ``devices``: None/one entry = this process on ``params.device`` (or that entry); several entries
    (``["cuda:0", "cuda:1"]``; ``["cpu", "cpu"]`` works too) = one spawned process per entry, pulling
    slides from one shared queue. Results come back in the order of ``specs``. ``cohort``: the slides the
    int8 calibration sample is drawn from (default ``specs``; the CLI passes all slides before ``--shard``,
    so every shard makes, or waits for and reuses, the same int8 model).
    """
    started = time.time()
    out = Path(out)
    devs = list(devices or [params.device])
    if len(devs) == 1:
        extractor = Extractor(params, devs[0])
        extractor.prepare(cohort or specs, out)
        results = run_items(specs, lambda s: s.slide_id, lambda s: extractor.extract(s, out, overwrite), on_done)
    else:
        results = _extract_on_devices(specs, out, params, devs, overwrite, on_done, cohort or specs)
    config = {**asdict(params), "devices": devs, "out": str(out), "overwrite": overwrite,
              "slides": [str(s.path) for s in specs], **(log_config or {})}
    write_run_log(out, "extract-features", config, results, started)
    return results


def _extract_on_devices(specs: Sequence[SlideSpec], out: Path, params: ExtractParams, devs: list[str],
                        overwrite: bool, on_done: Callable[[ItemResult], None] | None,
                        cohort: Sequence[SlideSpec]) -> list[ItemResult]:
    from dataclasses import replace

    from .encoders import get_encoder_spec, resolve_weights

    choices = [resolve_engine(params.engine, params.precision, resolve_device(d), int8_auto=params.int8_auto)
               for d in devs]  # validate here: usage errors must not surface as per-slide failures
    resolve_weights(get_encoder_spec(params.encoder), params.weights)
    if any(c.int8 for c in choices) and not params.engine_model:  # one int8 model for all processes
        first = Extractor(replace(params, num_workers=0), "cpu")
        first.prepare(cohort, out)
        params = replace(params, engine_model=first.engine.engine_model,
                         precision="fp32" if first.engine.engine_model is None else params.precision)
        del first
    return extract_multi(list(specs), out, asdict(params), devs, overwrite, on_done, make_device_extractor)


def make_device_extractor(device: str, n_devices: int, params: dict[str, Any]) -> Extractor:
    """The extractor of one spawned per-device process (:func:`.multidevice.extract_multi`)."""
    return Extractor(ExtractParams(**params), device, n_devices=n_devices)


