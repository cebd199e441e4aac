"""Options of ``ghanet predict`` (:class:`PredictConfig`), light to import (the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class PredictConfig:
    """Options of :func:`predict_cases` (CLI flags of ``ghanet predict``).

    ``features_dir``: folder of existing bags (``<slide_id>.h5``/``.pt``); segmentation and extraction
    are skipped. ``assume_encoder``: accept bags without encoder attributes (CLAM/TRIDENT) as made with
    the model's encoder. ``weights``: encoder weights (file, ``random[:seed]``, None = torch hub cache).
    ``engine``: what runs the encoder for float models (``auto`` | ``torch`` | ``openvino``); a model trained
    on int8 bags always runs its recorded int8 model (OpenVINO).
    """

    out: Path = Path("ghanet-out")
    folds: list[int] | None = None
    features_dir: Path | None = None
    assume_encoder: bool = False
    heatmaps: bool = False
    device: str = "auto"
    weights: str | None = None
    batch_size: int = 64
    num_workers: int = 0
    overwrite: bool = False
    shard: tuple[int, int] | None = None
    engine: str = "auto"
