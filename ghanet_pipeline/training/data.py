"""Cases -> bags: bag discovery, case/slide mapping, the in-memory bag cache, the class-balanced sampler
and patch subsampling."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.fingerprints import DIGEST_CHARS
from ..core.ids import sanitize_id
from ..features.fingerprints import FEATURES_SHA_ATTR
from ..protocols.released import balanced_class_weights
from ..wsi.inputs import SLIDE_EXTENSIONS, tcga_case_id

log = logging.getLogger(__name__)


def _strip_slide_ext(name: str) -> str:
    """``name`` without a slide file ending (MCAT tables keep ``.svs`` in their slide ids)."""
    low = name.lower()
    for ext in SLIDE_EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def list_bags(features_dir: Path | str) -> dict[str, Path]:
    """Bag files in ``features_dir`` (``bags.find_bags``: stem -> path, .h5 preferred); error when none."""
    from ..features.bags import find_bags

    bags = find_bags(features_dir)
    if not bags:
        raise InputError(f"no bags (.h5/.pt) in {features_dir}; run `ghanet extract-features` first or point "
                         f"--features at the folder that holds them (e.g. <out>/features/<encoder_tag>)")
    return bags


def map_cases_to_bags(case_ids: Sequence[str], bags: Mapping[str, Path], case_slides: Mapping[str, Sequence[str]],
                      manifest: Path | str | None = None, case_id_from: str | None = None
                      ) -> tuple[dict[str, list[Path]], list[str]]:
    """Find each case's bags. Returns (case -> bag paths, cases without any bag).

    Priority: ``manifest`` (slide_id -> case_id) > ``case_id_from="tcga"`` (first 12 characters of the
    bag name) > the genomics ``cases.csv`` slide ids (file extension ignored) > a bag named like the case.
    """
    wanted = set(case_ids)
    by_case: dict[str, list[Path]] = {c: [] for c in case_ids}
    if manifest is not None:
        from ..wsi.inputs import read_manifest

        for spec in read_manifest(manifest, case_id_from=case_id_from):
            if spec.case_id in wanted and spec.slide_id in bags:
                by_case[spec.case_id].append(bags[spec.slide_id])
    elif case_id_from == "tcga":
        for stem, path in bags.items():
            if tcga_case_id(stem) in wanted:
                by_case[tcga_case_id(stem)].append(path)
    else:
        for case in case_ids:
            for sid in case_slides.get(case, ()):
                for key in (sid, _strip_slide_ext(sid), sanitize_id(_strip_slide_ext(sid), "slide_id")):
                    if key in bags:
                        if bags[key] not in by_case[case]:
                            by_case[case].append(bags[key])
                        break
            if not by_case[case] and case in bags:
                by_case[case].append(bags[case])
    missing = [c for c in case_ids if not by_case[c]]
    return {c: sorted(p) for c, p in by_case.items() if p}, missing


class CaseBags:
    """A case's slides concatenated into one (N, D) float32 array, with encoder compatibility checked.

    Bags are validated once when built (readable, >0 patches, same encoder/weights/input size/dim);
    their features stay in memory when the total fits in ``cache_gb`` GiB, else they are re-read.
    Empty slide bags (0 patches) are dropped with a warning; a case left without patches is "missing".
    """

    def __init__(self, case_paths: Mapping[str, Sequence[Path]], cache_gb: float = 4.0,
                 allow_mixed_precision: bool = False) -> None:
        from ..features.bags import read_bag
        from ..features.compatibility import check_compatible
        from ..features.engines import check_precision_mix

        self._read_bag = read_bag
        self.paths: dict[str, list[Path]] = {}
        self.n_patches: dict[str, int] = {}
        self.warnings: list[str] = []
        self.recorded_sha: dict[str, str] = {}  # bag path -> its recorded features_sha256 (16 hex)
        self._cache: dict[str, np.ndarray] = {}
        attrs_list: list[dict[str, Any]] = []
        empty: list[str] = []
        budget = cache_gb * (1 << 30)
        used = 0.0
        dims: dict[int, str] = {}
        for case, paths in case_paths.items():
            kept: list[Path] = []
            feats: list[np.ndarray] = []
            for p in paths:
                bag = read_bag(p)
                attrs = dict(bag.attrs or {})
                if attrs.get(FEATURES_SHA_ATTR):  # recorded content hash: the fingerprint needs no re-read
                    self.recorded_sha[str(p)] = str(attrs[FEATURES_SHA_ATTR])[:DIGEST_CHARS]
                attrs.setdefault("slide_id", p.stem)
                attrs["path"] = str(p)
                n = int(bag.features.shape[0]) if bag.features.ndim == 2 else 0
                if n == 0:
                    empty.append(p.name)
                    continue
                attrs["dim"] = int(bag.features.shape[1])
                dims.setdefault(attrs["dim"], p.name)
                attrs_list.append(attrs)
                kept.append(p)
                feats.append(np.asarray(bag.features, dtype=np.float32))
            if not kept:
                continue
            self.paths[case] = kept
            self.n_patches[case] = sum(f.shape[0] for f in feats)
            size = sum(f.nbytes for f in feats)
            if used + size <= budget:
                self._cache[case] = feats[0] if len(feats) == 1 else np.concatenate(feats, axis=0)
                used += size
        if empty:
            msg = (f"{len(empty)} bag(s) have 0 patches and are ignored: {', '.join(empty[:10])}"
                   f"{' ...' if len(empty) > 10 else ''} (slides without tissue? check the segment QC images)")
            self.warnings.append(msg)
            log.warning("%s", msg)
        if attrs_list:
            check_compatible(attrs_list)  # encoder, weights, input size, geometry, feature dim
            check_precision_mix(attrs_list, allow=allow_mixed_precision)  # int8 bags are not mixed with others
        self.dim = next(iter(dims)) if dims else 0
        self.encoder = _encoder_info(attrs_list)
        self.segment_params = _segment_info(attrs_list)

    def cases(self) -> list[str]:
        return list(self.paths)

    def features(self, case: str) -> np.ndarray:
        if case in self._cache:
            return self._cache[case]
        feats = [np.asarray(self._read_bag(p).features, dtype=np.float32) for p in self.paths[case]]
        return feats[0] if len(feats) == 1 else np.concatenate(feats, axis=0)


def _segment_info(attrs_list: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Segmentation settings recorded in the bags (None for bags without them, e.g. CLAM's)."""
    for attrs in attrs_list:
        text = attrs.get("segment_params")
        if text:
            return dict(json.loads(text))
    return None


def _encoder_info(attrs_list: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Encoder fields for checkpoints (``compatibility.encoder_meta`` of the first bag; "unknown" where absent),
    plus ``precision`` and the int8 model's key and hash when the bags are int8 (predict then uses that model)."""
    from ..features.compatibility import encoder_meta
    from ..features.engines import int8_record

    return {**encoder_meta(attrs_list[0]), **int8_record(attrs_list[0])} if attrs_list else {}


def balanced_order(bins: np.ndarray, censorship: np.ndarray, seed: int, fold: int, epoch: int) -> np.ndarray:
    """Indices of one epoch's cases: ``len(bins)`` draws with replacement, weight = n / size of the case's
    (bin, censorship) class, so the 8 classes are drawn equally often on average (authors' sampler)."""
    w = balanced_class_weights(bins, censorship)
    rng = np.random.default_rng([seed, fold, epoch, 1])
    return rng.choice(len(w), size=len(w), replace=True, p=w / w.sum())


def to_tensor(x: np.ndarray, device):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def subsample_patches(feats: np.ndarray, max_patches: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_patches is None or feats.shape[0] <= max_patches:
        return feats
    idx = np.sort(rng.choice(feats.shape[0], size=max_patches, replace=False))
    return feats[idx]
