"""Bags for prediction: segment + embed a new slide with the run's recorded settings (the encoder is
loaded once per run), or reuse an existing bag after checking it matches the model's encoder."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError, InputError, MismatchError, SlideError
from ..features.compatibility import check_encoder
from ..features.engines import check_precision_mix, precision_class
from ..wsi.inputs import SlideSpec
from .config import PredictConfig
from .loading import Ensemble, segment_params_for

log = logging.getLogger(__name__)


def bag_path(features_dir: Path, spec: SlideSpec) -> Path:
    from ..features.bags import find_bags

    found = find_bags(features_dir, [spec.slide_id, spec.raw_slide_id])
    path = found.get(spec.slide_id) or found.get(spec.raw_slide_id)
    if path is None:
        raise InputError(f"slide {spec.slide_id!r}: no bag {spec.slide_id}.h5 (or .pt) in --features {features_dir}")
    return path


@dataclass
class SlideBag:
    """One slide's bag for prediction: features (N, D), level-0 coords (N, 2) and the bag's attrs."""

    spec: SlideSpec
    features: np.ndarray
    coords: np.ndarray | None  # None for bags without coords (CLAM .pt): no heatmaps
    attrs: dict[str, Any]
    #: why the slide gave no patch (``features`` is then empty)
    note: str = ""


class Embedder:
    """Turns a slide into its bag, reusing the segment and features stages (encoder loaded once).

    The encoder is built once per run and moved to the device once; segmentation uses the model's
    target um/px and patch size (other settings: segment defaults), extraction its input size.
    Existing valid coords/bags under ``<out>`` are reused (``overwrite`` redoes them).
    """

    def __init__(self, ens: Ensemble, config: PredictConfig) -> None:
        from ..features import encoders
        from ..features.extract import Extractor, ExtractParams

        self.config = config
        self.settings = ens.encoder
        try:
            encoder = encoders.load_encoder(self.settings["encoder"], config.weights)
        except ConfigError as exc:
            if config.weights is not None:
                raise
            trained = str(self.settings.get("weights_sha256"))
            if trained.startswith("random"):  # seeded untrained weights: no file to look for
                how = f"pass --weights {trained} (the seeded random weights it was trained with)"
            else:
                how = (f"pass --weights FILE with those encoder weights (sha256 {trained[:16]}...; a demo or "
                       f"calibrated encoder's file is under <out>/encoders/ of the run that made it)")
            raise ConfigError(f"the model was trained on features of {describe_encoder(self.settings)}; "
                              f"{how}.\n{exc}") from exc
        source = str(encoder.weights_path) if encoder.weights_path else encoder.weights_id
        check_encoder(self.settings, {**self.settings, "weights_sha256": encoder.weights_id},
                      f"encoder weights {source}")
        self.notes = list(encoder.notes)
        params = ExtractParams(encoder=self.settings["encoder"], weights=config.weights,
                               input_size=int(self.settings["input_size"]), batch_size=config.batch_size,
                               num_workers=config.num_workers, device=config.device,
                               **engine_params(self.settings, config.engine))
        self.extractor = Extractor(params, config.device, encoder=encoder)
        self.notes += [f"encoder runs on {self.extractor.engine.engine} in {self.extractor.engine.precision}"
                       + (f" (model {params.engine_model}, as the training bags)" if params.engine_model else "")]
        self.segment_params = segment_params_for(ens.segment_params, self.settings)

    def embed(self, spec: SlideSpec, seconds: dict[str, float]) -> SlideBag:
        """Bag of one slide (empty, with a ``note`` saying why, when the slide has no tissue patch); adds the
        segment and extract times to ``seconds``."""
        from ..features import bags
        from ..wsi.segment import segment_slide

        out = Path(self.config.out)
        t = time.perf_counter()
        params = self.segment_params
        res = segment_slide(spec, out, params, overwrite=self.config.overwrite)
        seconds["segment"] += time.perf_counter() - t
        if not res.ok:
            raise SlideError(res.message if spec.slide_id in res.message else f"slide {spec.slide_id}: {res.message}")
        if not res.metrics.get("patches"):
            return SlideBag(spec=spec, features=np.zeros((0, 0), dtype=np.float32), coords=None, attrs={},
                            note=f"slide {spec.slide_id}: {res.message or 'no tissue patch'}")
        t = time.perf_counter()
        res = self.extractor.extract(spec, out, overwrite=self.config.overwrite)
        if not res.ok:
            raise SlideError(res.message if spec.slide_id in res.message else f"slide {spec.slide_id}: {res.message}")
        bag = bags.read_bag(res.metrics["bag"])
        seconds["extract"] += time.perf_counter() - t
        check_encoder(self.settings, bag.attrs, f"bag {bag.path}")
        check_precision_mix([{**self.settings, "path": "the model's training bags"}, {**bag.attrs, "path": str(bag.path)}])
        return SlideBag(spec=spec, features=bag.features, coords=np.asarray(bag.coords, dtype=np.int64),
                         attrs=dict(bag.attrs))


def read_existing_bag(path: Path, ens: Ensemble, config: PredictConfig, spec: SlideSpec) -> tuple[SlideBag, str]:
    """Read a bag given with ``--features`` and check it against the model's encoder settings."""
    from ..features import bags

    bag = bags.read_bag(path)
    attrs = dict(bag.attrs or {})
    if not any(attrs.get(k) is not None for k in ("encoder", "weights_sha256")):
        if not config.assume_encoder:
            raise MismatchError(
                f"bag {path} has no encoder attributes (a CLAM/TRIDENT bag?), so ghanet cannot check that it was "
                f"made with the model's encoder ({describe_encoder(ens.encoder)}). If you are sure it was, pass "
                f"--assume-encoder; otherwise re-extract it with 'ghanet extract-features'")
        how = "assumed (--assume-encoder)"
    else:
        check_encoder(ens.encoder, attrs, f"bag {path}")
        check_precision_mix([{**ens.encoder, "path": "the model's training bags"}, {**attrs, "path": str(path)}])
        how = "checked"
    feats = np.asarray(bag.features, dtype=np.float32)
    coords = None if bag.coords is None else np.asarray(bag.coords, dtype=np.int64)
    return SlideBag(spec=spec, features=feats, coords=coords, attrs=attrs), how


def engine_params(settings: dict[str, Any], engine: str) -> dict[str, Any]:
    """ExtractParams fields that make predict follow its training bags: their int8 model when they were
    int8, else ``engine`` in a float precision (``auto`` never turns into int8 here)."""
    if precision_class(settings) != "float":
        return {"engine": "openvino", "precision": "int8", "engine_model": str(settings["engine_model"]),
                "int8_auto": False}
    return {"engine": engine, "precision": "auto", "int8_auto": False}


def describe_encoder(enc: dict[str, Any]) -> str:
    return (f"{enc.get('encoder')}, weights {str(enc.get('weights_sha256'))[:16]}, input {enc.get('input_size')} px, "
            f"{enc.get('target_mpp')} um/px, patch {enc.get('patch_size')} px")
