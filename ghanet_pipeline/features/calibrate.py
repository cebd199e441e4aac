"""Data-dependent calibration of an encoder whose weights carry no learned meaning (``random:<seed>``).

A randomly initialised, truncated ResNet50 maps every patch to almost the same vector (mean pairwise
cosine ~0.999): its BatchNorm layers hold the default statistics (mean 0, variance 1), which do not
match the activations of real patches, and the pooled ReLU outputs share a large common component.
:func:`calibrate_encoder` fixes both on patches of the cohort, without any download:

1. **BatchNorm re-estimation** (data-dependent initialisation): every BatchNorm layer's running mean
   and variance are reset and re-estimated as the cumulative average over ``n_patches`` patches drawn
   (seeded) from the slides' patch grids; convolution weights are unchanged.
2. **Per-channel standardisation** of the pooled features: the mean and standard deviation of each
   output channel over the same patches; the calibrated encoder returns ``(f - mean) / std``.

The result is saved as a weights file (safetensors: the encoder's own state-dict keys with the new
BatchNorm statistics, plus ``ghanet_calibration.mean`` / ``ghanet_calibration.std``) with a JSON
provenance record in its header. It is used like any weights file (``--weights FILE``), so its
SHA-256 becomes the bags' and checkpoints' ``weights_sha256``: features of the raw random encoder and
of a calibrated one are never mixed, and ``predict`` checks that the same file is given.

Calibration does not make features meaningful the way ImageNet or pathology pre-training does; it
makes random features *usable* for demos and tests (patches of different tissue get different
vectors). With real pre-trained weights it is not needed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..core.errors import ConfigError, GhanetError
from ..core.files import atomic_path, file_sha256
from ..core.ids import safe_child
from ..wsi.inputs import SlideSpec
from .encoders import CALIBRATION_PREFIX, get_encoder_spec, load_encoder, preprocess

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

METHOD = "batchnorm-reestimation+channel-standardisation"
#: header key of the provenance record inside the safetensors file
METADATA_KEY = "ghanet_calibration"


@dataclass
class CalibrationResult:
    """The calibrated weights file, its SHA-256 and what it was made from."""

    path: Path
    sha256: str
    reused: bool
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def default_output(out: Path | str, encoder: str, weights: str) -> Path:
    """``<out>/encoders/<encoder>_<weights>_calibrated.safetensors`` (weights text made file-safe)."""
    base = "".join(c if c.isalnum() else "" for c in str(weights)) or "weights"
    return safe_child(out, "encoders", f"{encoder}_{base}_calibrated.safetensors")


def read_record(path: Path | str) -> dict[str, Any] | None:
    """The provenance record stored in a calibrated weights file (None for other files)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # noqa: BLE001 - not a safetensors file: no record
        return None
    text = meta.get(METADATA_KEY)
    return json.loads(text) if text else None


def sample_patches(specs: Sequence[SlideSpec], out: Path, n_patches: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n_patches`` patches (uint8, (n, P, P, 3) at the grid's target um/px) drawn without replacement
    and seeded from the patch grids of ``specs`` (``<out>/segment``; segmented with defaults when
    missing), plus the slide ids that contributed."""
    from ..wsi.slide import Slide
    from .coords import slide_coords

    grids = []
    for spec in specs:
        coords, attrs, _ = slide_coords(spec, out)
        grids.append((spec, coords, attrs))
    sizes = {int(a["patch_size"]) for _, _, a in grids}
    if len(sizes) > 1:
        raise ConfigError(f"the slides' patch grids use different patch sizes {sorted(sizes)}; segment them "
                          f"with one --patch-size before calibrating")
    index = [(gi, r) for gi, (_, c, _) in enumerate(grids) for r in range(len(c))]
    if not index:
        raise GhanetError("no tissue patches in the given slides: nothing to calibrate on")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(index), size=min(int(n_patches), len(index)), replace=False)
    by_slide: dict[int, list[int]] = {}
    for i in sorted(pick.tolist()):
        gi, r = index[i]
        by_slide.setdefault(gi, []).append(r)
    patches = []
    for gi, rows in by_slide.items():
        spec, coords, attrs = grids[gi]
        with Slide(spec.path, mpp=spec.mpp, slide_id=spec.slide_id) as slide:
            plan = slide.plan(float(attrs["target_mpp"]), int(attrs["patch_size"]))
            patches += [slide.read_patch(plan, int(coords[r, 0]), int(coords[r, 1])) for r in rows]
    arr = np.stack(patches)
    return arr[rng.permutation(len(arr))], [grids[gi][0].slide_id for gi in sorted(by_slide)]


def _torchvision_keys(spec: Any, trunk: torch.nn.Module) -> dict[str, str]:
    """Trunk state-dict key -> key in the encoder's reference architecture (the names weight files use).

    The trunk is built from the reference model's modules, so its tensors share storage with them."""
    ref_full = spec.build()
    ref_trunk = spec.trunk(ref_full)
    owner = {t.data_ptr(): k for k, t in ref_full.state_dict().items() if t.numel()}
    names = {}
    for t_ref, k in zip(ref_trunk.state_dict().values(), trunk.state_dict(), strict=True):
        if t_ref.numel() and t_ref.data_ptr() in owner:
            names[k] = owner[t_ref.data_ptr()]
    return names


def calibrate_model(model: torch.nn.Module, spec: Any, patches: np.ndarray, batch_size: int = 32
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Re-estimate ``model``'s BatchNorm statistics on ``patches`` (in place), then return the
    per-channel mean and std of its outputs in eval mode and the number of BatchNorm layers reset."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    x = torch.from_numpy(np.ascontiguousarray(patches))
    with torch.no_grad():
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over every batch
                m.train()
            for i in range(0, len(x), batch_size):
                model(preprocess(x[i:i + batch_size], spec))
            for m in bns:
                m.momentum = 0.1
        model.eval()
        feats = torch.cat([model(preprocess(x[i:i + batch_size], spec)).float()
                           for i in range(0, len(x), batch_size)]).numpy()
    mean = feats.mean(axis=0)
    std = feats.std(axis=0)
    floor = max(1e-6, 1e-3 * float(np.median(std)))  # dead channels: leave them near 0, never blow up
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32), len(bns)


def calibrate_encoder(specs: Sequence[SlideSpec], out: Path | str, encoder: str = "resnet50_trunc",
                      weights: str = "random", n_patches: int = 512, seed: int = 0, batch_size: int = 32,
                      output: Path | str | None = None, overwrite: bool = False) -> CalibrationResult:
    """Calibrate ``encoder`` with ``weights`` on patches of ``specs`` and save it (see module doc).

    ``output`` defaults to :func:`default_output`. An existing file made from the same encoder,
    weights, slides, ``n_patches`` and ``seed`` is reused (``overwrite`` redoes it); one made
    differently raises :class:`ConfigError` (pass ``--overwrite`` or another ``--output``).
    Writes the run record ``<out>/logs/calibrate-encoder-<time>-<pid>.json``, like every stage.
    """
    from ..core.runs import ItemResult, write_run_log

    started, t0 = time.time(), time.perf_counter()
    res = _calibrate(specs, Path(out), encoder, weights, n_patches, seed, batch_size, output, overwrite)
    item = ItemResult(res.path.name, "skipped" if res.reused else "done", round(time.perf_counter() - t0, 2),
                      "same calibration exists" if res.reused else "; ".join(res.notes),
                      {"sha256": res.sha256, "n_patches": res.record.get("n_patches")})
    write_run_log(out, "calibrate-encoder", {"encoder": encoder, "weights": weights, "n_patches": n_patches,
                                             "seed": seed, "batch_size": batch_size, "output": str(res.path),
                                             "slides": [str(s.path) for s in specs]}, [item], started)
    return res


def _calibrate(specs: Sequence[SlideSpec], out: Path, encoder: str, weights: str, n_patches: int, seed: int,
               batch_size: int, output: Path | str | None, overwrite: bool) -> CalibrationResult:
    import torch
    from safetensors.torch import save_file

    spec = get_encoder_spec(encoder)
    if not specs:
        raise ConfigError("no slides given to calibrate on; pass slides or --manifest")
    dest = Path(output) if output is not None else default_output(out, encoder, weights)
    slide_ids = sorted(s.slide_id for s in specs)
    wanted = {"encoder": encoder, "base_weights": str(weights), "n_patches_requested": int(n_patches),
              "seed": int(seed), "slides_given": slide_ids}
    if dest.is_file() and not overwrite:
        old = read_record(dest)
        if old is not None and all(old.get(k) == v for k, v in wanted.items()):
            return CalibrationResult(dest, file_sha256(dest), True, old)
        raise ConfigError(f"{dest} exists but was calibrated differently (or is not a calibration file); pass "
                          f"--overwrite to replace it or --output to write another file")
    loaded = load_encoder(encoder, weights)
    patches, used = sample_patches(specs, out, n_patches, seed)
    model = loaded.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std, n_bn = calibrate_model(model, spec, patches, batch_size)
        names = _torchvision_keys(spec, model)
    state = {names[k]: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k in names}
    state[CALIBRATION_PREFIX + "mean"] = torch.from_numpy(mean)
    state[CALIBRATION_PREFIX + "std"] = torch.from_numpy(std)
    record = {**wanted, "method": METHOD, "base_weights_id": loaded.weights_id, "n_patches": int(len(patches)),
              "patch_size": int(patches.shape[1]), "slides_used": used, "batchnorm_layers": n_bn,
              "ghanet_version": __version__}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(record, sort_keys=True)})
    notes = [f"{len(patches)} patches of {len(used)} slides; {n_bn} BatchNorm layers re-estimated"]
    return CalibrationResult(dest, file_sha256(dest), False, record, notes + loaded.notes)


def mean_pairwise_cosine(features: np.ndarray, max_rows: int = 2000, seed: int = 0) -> float:
    """Mean cosine similarity over all pairs of distinct rows (a seeded sample of ``max_rows`` rows)."""
    f = np.asarray(features, dtype=np.float64)
    if len(f) > max_rows:
        f = f[np.random.default_rng(seed).choice(len(f), max_rows, replace=False)]
    n = len(f)
    if n < 2:
        return float("nan")
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    s = f.sum(axis=0)
    return float((s @ s - n) / (n * (n - 1)))
