"""``ghanet check-precision``: how far int8 (and bf16, OpenVINO fp32) features of *your* encoder move from
its PyTorch fp32 features, on a sample of *your* slides, in about a minute.

The int8 model is made exactly as ``extract-features --precision int8`` makes it for the same slides,
weights and recipe (same calibration sample, same cache key), so the check measures the model the
extraction will then reuse from the cache. The figures are measured on other patches: a second
stratified sample (its own seed) with the calibration patches removed. PyTorch fp32 is the reference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import ConfigError
from .agreement import MAX_ERROR_SPREAD, MIN_DISTANCE_RANK, agreement, passes
from .choice import native_bf16

log = logging.getLogger(__name__)


@dataclass
class PrecisionCheck:
    """Rows ``{name: figures}`` (``agreement`` figures plus ``seconds``), the int8 model's key and record."""

    rows: dict[str, dict[str, Any]]
    patches: int
    slides: int
    int8_model: str | None
    int8_record: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (NaN, e.g. a rank correlation of constant distances, becomes null)."""
        return _no_nan({"patches": self.patches, "slides": self.slides, "int8_model": self.int8_model,
                "gate": {"max_error_spread": MAX_ERROR_SPREAD, "min_distance_rank": MIN_DISTANCE_RANK},
                "rows": self.rows, "int8_record": self.int8_record, "notes": self.notes})


def _no_nan(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def eval_sample(specs: Sequence[Any], out: Path, n: int, seed: int, exclude: Any) -> Any:
    """A stratified sample of ``n`` patches drawn with ``seed``, without the patches of ``exclude`` (the
    int8 calibration sample, a :class:`.int8.Sample` of the same slides)."""
    from .int8 import Sample, draw_sample, stratified_selection

    pool = draw_sample(specs, out, 10 ** 9, seed)  # every patch, to know the grids
    taken = set(exclude.picked) if exclude is not None else set()
    free = [[r for r in range(len(c)) if (si, r) not in taken] for si, (c, _) in enumerate(pool.grids)]
    picked = [(si, free[si][r]) for si, r in stratified_selection([len(f) for f in free], n, seed)]
    return Sample(pool.specs, pool.grids, picked, "")


def check_precision(specs: Sequence[Any], out: Path | str, encoder: str = "resnet50_trunc",
                    weights: str | None = None, patches: int = 128, seed: int = 1, int8_patches: int = 512,
                    int8_seed: int = 0, input_size: int | None = None, bf16: bool | None = None,
                    threads: int | None = None, cohort: Sequence[Any] | None = None) -> PrecisionCheck:
    """Measure int8 / OpenVINO fp32 / bf16 features against PyTorch fp32 on ``patches`` patches of ``specs``
    (see module doc). ``bf16``: None = where the CPU has bf16 instructions (else it is emulated, slow).
    ``cohort``: the slides the int8 model is calibrated on (default ``specs``), as ``--int8-cohort``."""
    import torch

    from ..encoders import load_encoder
    from ..extract import Extractor, ExtractParams
    from .int8 import draw_sample, read_sample

    out = Path(out)
    enc = load_encoder(encoder, weights)
    params = ExtractParams(encoder=encoder, weights=weights, input_size=input_size, device="cpu",
                           precision="int8", engine="openvino", int8_patches=int8_patches, int8_seed=int8_seed,
                           torch_threads=threads, num_workers=0)
    ex = Extractor(params, "cpu", encoder=enc)
    cohort = list(cohort or specs)
    calib = draw_sample(cohort, out, int8_patches, int8_seed)  # the sample prepare quantizes on
    if cohort == list(specs) and (left := sum(len(c) for c, _ in calib.grids) - len(calib.picked)) < 3:
        total = left + len(calib.picked)
        smaller = f"a smaller --int8-patches (e.g. {max(8, total // 2)}), " if total - 8 >= 3 else ""
        raise ConfigError(f"the given slides have {total} tissue patches and the int8 calibration sample "
                          f"(--int8-patches {int8_patches}) takes {len(calib.picked)} of them, leaving {max(left, 0)} "
                          f"to check on (3 at least): give {smaller}more slides, or --int8-cohort with other slides")
    ex.prepare(cohort, out)
    sample = eval_sample(specs, out, patches, seed, calib if cohort == list(specs) else None)
    size = ex.input_size(sample.patch_size)
    x = read_sample(sample, size)
    rows: dict[str, dict[str, Any]] = {}
    t = time.perf_counter()
    ref = _run(ex.runner, x)
    ref_s = time.perf_counter() - t
    runs = {"openvino fp32": lambda: _run(ex.engine.fp32_runner(size, out), x)}
    if ex.engine.engine_model:
        runs["openvino int8"] = lambda: _run(ex.engine.runner(size, out), x)
    if bf16 or (bf16 is None and native_bf16()):
        def run_bf16() -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return _run(ex.runner, x)
        runs["torch bf16"] = run_bf16
        if native_bf16():  # OpenVINO has no bf16 emulation: only where the CPU computes bf16
            runs["openvino bf16"] = lambda: _run(ex.engine.fp32_runner(size, out, "bf16"), x)
    for name, fn in runs.items():
        t = time.perf_counter()
        got = fn()
        secs = time.perf_counter() - t
        rows[name] = {**agreement(ref, got), "seconds": round(secs, 2), "reference_seconds": round(ref_s, 2)}
        rows[name]["passes_gate"] = passes(rows[name])
    return PrecisionCheck(rows, len(x), len({si for si, _ in sample.picked}), ex.engine.engine_model,
                          ex.engine.record, list(ex.notes))


def _run(runner: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    import torch

    with torch.inference_mode():
        parts = [runner(torch.from_numpy(x[i:i + batch_size])).float().numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(parts)
