"""Cases -> bags: bag discovery, case/slide mapping, the in-memory bag cache, the class-balanced sampler
and patch subsampling."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import IdMismatchError, InputError
from ..core.fingerprints import DIGEST_CHARS
from ..core.slideids import RULE, match_slide_ids, slide_id_from_name
from ..features.fingerprints import FEATURES_SHA_ATTR
from ..protocols.released import balanced_class_weights
from ..wsi.tcga import TypeFilter, filter_slide_types, is_tcga_patient, slide_type, tcga_case_id

log = logging.getLogger(__name__)


def list_bags(features_dir: Path | str) -> dict[str, Path]:
    """Bag files in ``features_dir`` (``bags.find_bags``: stem -> path, .h5 preferred); error when none."""
    from ..features.bags import find_bags

    bags = find_bags(features_dir)
    if not bags:
        raise InputError(f"no bags (.h5/.pt) in {features_dir}; run `ghanet extract-features` first or point "
                         f"--features at the folder that holds them (e.g. <out>/features/<encoder_tag>)")
    return bags


@dataclass
class BagMapping:
    """Cases -> bags: ``found`` (case -> bag paths), ``missing`` (cases without a bag), ``source`` (what
    mapped them, in words), ``warning`` (counts and examples of ids that did not meet; None when all did),
    ``types`` (what ``--slide-types`` left out; None without it)."""

    found: dict[str, list[Path]]
    missing: list[str]
    source: str
    warning: str | None = None
    types: TypeFilter | None = None


def map_cases(case_ids: Sequence[str], bags: Mapping[str, Path], case_slides: Mapping[str, Sequence[str]],
              manifest: Path | str | None = None, case_id_from: str | None = None,
              slide_types: Sequence[str] | None = None, table: str = "cases.csv",
              where: str | None = None) -> BagMapping:
    """Find each case's bags; every slide id goes through the slide-id rule (``slideids``).

    Priority: ``manifest`` (slide_id -> case_id) > ``case_id_from="tcga"`` (first 12 characters of the
    bag name) > ``case_slides`` (the genomics ``cases.csv`` slide ids, e.g. an MCAT table's GDC file names)
    > for a case without slide ids: a bag named like the case, or, for a TCGA patient barcode, the bags of
    that patient. ``slide_types`` (``--slide-types``) drops bags of other TCGA slide types first.
    ``where`` names the table in the warning (default: the mapping's source, ``genomics cases.csv``).
    """
    bags, types = _typed_bags(bags, slide_types)
    wanted = list(dict.fromkeys(case_ids))
    if manifest is not None:
        from ..wsi.inputs import read_manifest

        slides: dict[str, list[str]] = {c: [] for c in wanted}
        for spec in read_manifest(manifest, case_id_from=case_id_from):
            if spec.case_id in slides:
                slides[spec.case_id].append(spec.slide_id)
        source = f"manifest {Path(manifest).name}"
    elif case_id_from == "tcga":
        slides = {c: [b for b in bags if tcga_case_id(b) == c] for c in wanted}
        source = "TCGA case ids"
    else:
        slides = {c: list(case_slides.get(c, ())) or _bags_named_for(c, bags) for c in wanted}
        source = f"genomics {table}"
    if types is not None:  # a table's slides of the left-out types are not "missing"
        slides = {c: [s for s in v if slide_type(slide_id_from_name(s)) in (None, *types.kinds)] for c, v in slides.items()}
    match = match_slide_ids(slides, bags)
    found = {c: sorted(bags[d] for d in ids) for c, ids in match.found.items()}
    if manifest is None and case_id_from != "tcga":
        for c in match.cases_without:  # a table's slide ids that meet no bag: a bag named like the case
            if c in bags:
                found[c] = [bags[c]]
    missing = [c for c in wanted if c not in found]
    match.cases_without = missing
    match.unclaimed = [b for b in match.unclaimed if all(bags[b] not in p for p in found.values())]
    return BagMapping({c: found[c] for c in wanted if c in found}, missing, source,
                      match.warning(where or source, "the bags", len(wanted), "bag"), types)


def map_cases_to_bags(case_ids: Sequence[str], bags: Mapping[str, Path], case_slides: Mapping[str, Sequence[str]],
                      manifest: Path | str | None = None, case_id_from: str | None = None
                      ) -> tuple[dict[str, list[Path]], list[str]]:
    """(case -> bag paths, cases without any bag): :func:`map_cases` without its report."""
    m = map_cases(case_ids, bags, case_slides, manifest, case_id_from)
    return m.found, m.missing


def _typed_bags(bags: Mapping[str, Path], slide_types: Sequence[str] | None
                ) -> tuple[dict[str, Path], TypeFilter | None]:
    kept, report = filter_slide_types(list(bags), slide_types, lambda b: b, tcga_case_id)
    return {b: bags[b] for b in kept}, report


def _bags_named_for(case: str, bags: Mapping[str, Path]) -> list[str]:
    """Bags of a case the table lists no slides for: one named like the case, else a TCGA patient's bags."""
    if case in bags:
        return [case]
    if is_tcga_patient(case):
        return [b for b in bags if tcga_case_id(b) == case]
    return []


def training_cases(genomics_dir: Path, features_dir: Path, case_ids: Sequence[str], manifest: Path | str | None,
                   case_id_from: str | None, slide_types: Sequence[str] | None) -> tuple[BagMapping, list[str]]:
    """Map the genomics cases to the bags in ``features_dir`` (:func:`map_cases`, slide ids from
    ``<genomics>/cases.csv``); returns the mapping and the warnings to record (also logged).

    Raises :class:`IdMismatchError` (exit 2) when no case meets a bag, naming the slide-id rule, examples
    from both sides and the options that map them (``--manifest``, ``--case-id-from tcga``).
    """
    import pandas as pd

    cases_csv = genomics_dir / "cases.csv"
    case_slides: dict[str, list[str]] = {}
    if cases_csv.is_file():
        cdf = pd.read_csv(cases_csv, dtype=str, keep_default_na=False)
        if "slide_ids" in cdf.columns:
            case_slides = {r.case_id: [s for s in r.slide_ids.split(";") if s] for r in cdf.itertuples()}
    bag_files = list_bags(features_dir)
    where = None if manifest or case_id_from else f"{cases_csv} (column slide_ids)"
    m = map_cases(case_ids, bag_files, case_slides, manifest, case_id_from, slide_types, where=where)
    table_ex = [s for c in case_ids for s in case_slides.get(c, ())][:3] or list(case_ids)[:3]
    if not m.found:
        raise IdMismatchError(
            f"none of the {len(case_ids)} cases in {genomics_dir} has a bag in {features_dir}: the genomics and the "
            f"bags are for different case sets, or their slide ids do not meet ({RULE}). Table slide ids / cases "
            f"e.g. {', '.join(table_ex)}; bags e.g. {', '.join(list(bag_files)[:3])}. Map slides to cases with "
            f"--manifest slides.csv (slide_id = bag name, case_id) or --case-id-from tcga (TCGA bag names), or "
            f"check the slide_ids column of {cases_csv}")
    warnings = [w for w in (m.warning, m.types.message() if m.types else None) if w]
    for w in warnings[:1]:
        log.warning("%s", w)  # the type filter logged its own line
    return m, warnings


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
