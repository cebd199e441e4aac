"""Feature bags: the HDF5 contract between ``extract-features`` and ``train``/``predict``.

A bag (schema_version 1, see docs/architecture.md, "Bag schema") holds datasets ``features`` (N, D) float32 or
float16 and ``coords`` (N, 2) int64 (level-0 top-left x, y), chunked by blocks of rows, and root attrs
naming the encoder, its weights and the patch geometry. ``complete`` is written last.

:func:`read_bag` also loads bags made by other tools so users can train on what they have:
CLAM / TRIDENT ``.h5`` (``features`` (N, D) or (1, N, D), ``coords``) and CLAM ``.pt`` (a feature
tensor only; loaded with ``torch.load(weights_only=True)``, never unpickling code).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.attrs import h5_value, plain, same_setting
from ..core.errors import InputError
from ..core.files import atomic_path
from ..core.safeload import torch_load_tensors
from .fingerprints import FEATURES_SHA_ATTR, features_sha256

BAG_SCHEMA_VERSION = 1

#: root attrs every ghanet bag carries (``complete`` is set last, separately)
REQUIRED_ATTRS = ("schema_version", "slide_id", "encoder", "weights_sha256", "input_size", "target_mpp",
                  "patch_size", "patch_size_level0", "level0_mpp", "source_name", "source_bytes",
                  "ghanet_version")


DEFAULT_CHUNK_ROWS = 1024


@dataclass
class Bag:
    """Features of one slide. ``coords`` is None for formats that do not store them (CLAM ``.pt``).

    ``attrs`` are the file's root attrs (ours) or what could be inferred (foreign formats, with
    ``format`` saying which); ``features`` is always float32 (N, D).
    """

    features: np.ndarray
    coords: np.ndarray | None
    attrs: dict[str, Any]
    path: Path
    format: str = "ghanet"  # ghanet | clam-h5 | clam-pt

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def encoder_tag(encoder: str, input_size: int, weights_id: str, int8: bool = False) -> str:
    """Folder name under ``<out>/features/`` for bags of one encoder set-up.

    ``resnet50_trunc_256`` for real weights at 256 px input; ``resnet50_trunc_224_random0`` for
    ``--weights random`` (seed 0); ``_int8`` appended for bags of an int8-quantized encoder. Different real
    weight files share a folder name, so their bags are told apart by ``weights_sha256`` (a mismatch is an
    error, never a silent reuse).
    """
    tag = f"{encoder}_{int(input_size)}"
    if str(weights_id).startswith("random"):
        seed = str(weights_id).partition(":")[2] or "0"
        tag += f"_random{seed}"
    if int8:
        tag += "_int8"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tag)


# --------------------------------------------------------------------------- writing


class BagWriter:
    """Write one bag row block by row block into a temporary file; rename it when complete.

    Use as a context manager::

        with BagWriter(path, n_rows, dim, attrs) as w:
            w.write(start, features_block, coords_block)   # any order, any block sizes
        # here the file exists at ``path`` with complete=True; on an exception nothing is left

    Rows are pre-allocated (N is known from the coords), so a block is written where it belongs.
    ``features_sha256`` (:func:`ghanet_pipeline.features.fingerprints.features_sha256` of the stored features) and
    then ``complete`` are set after every row was written and the file is flushed; then the temporary
    file is renamed over ``path``. Timestamps are not stored, so identical inputs give identical files.
    """

    def __init__(self, path: Path | str, n_rows: int, dim: int, attrs: Mapping[str, Any],
                 dtype: str = "float32", chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"bag dtype must be float32 or float16, not {dtype!r}")
        missing = [k for k in REQUIRED_ATTRS if k not in attrs]
        if missing:
            raise ValueError(f"bag attrs missing: {', '.join(missing)}")
        self.path, self.n_rows, self.dim, self.dtype = Path(path), int(n_rows), int(dim), dtype
        self.attrs = dict(attrs)
        self.chunk_rows = int(max(1, min(chunk_rows, self.n_rows or 1)))
        self._written = np.zeros(self.n_rows, dtype=bool)
        self._ctx: contextlib.AbstractContextManager[Path] | None = None
        self._h5: Any = None

    def __enter__(self) -> BagWriter:
        import h5py

        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        try:
            self._h5 = h5py.File(tmp, "w", track_order=True)
            self._h5.create_dataset("features", shape=(self.n_rows, self.dim), maxshape=(None, self.dim),
                                    dtype=self.dtype, chunks=(self.chunk_rows, self.dim), track_times=False)
            self._h5.create_dataset("coords", shape=(self.n_rows, 2), maxshape=(None, 2), dtype="int64",
                                    chunks=(self.chunk_rows, 2), track_times=False)
            self._h5.attrs["complete"] = np.bool_(False)
            for k, v in self.attrs.items():
                self._h5.attrs[k] = h5_value(v)
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def write(self, start: int, features: np.ndarray, coords: np.ndarray) -> None:
        """Store rows ``start .. start+len(features)`` (features cast to the bag dtype)."""
        stop = start + len(features)
        if len(coords) != len(features) or not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"bad block: rows {start}..{stop} of {self.n_rows}, {len(coords)} coords")
        self._h5["features"][start:stop] = np.asarray(features, dtype=self.dtype)
        self._h5["coords"][start:stop] = np.asarray(coords, dtype=np.int64)
        self._written[start:stop] = True

    def _abort(self, exc: BaseException) -> None:
        with contextlib.suppress(Exception):
            if self._h5 is not None:
                self._h5.close()
        self._h5 = None
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            with contextlib.suppress(BaseException):
                ctx.__exit__(type(exc), exc, exc.__traceback__)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self._abort(exc)
            return
        try:
            if not self._written.all():
                missing = np.flatnonzero(~self._written)
                raise RuntimeError(f"bag {self.path}: {len(missing)} rows never written (first {missing[0]})")
            self._h5.flush()
            # content hash for provenance checks (train/predict compare it without reading the features)
            self._h5.attrs[FEATURES_SHA_ATTR] = features_sha256(self._h5["features"])
            self._h5.attrs["complete"] = np.bool_(True)  # last
            self._h5.close()
            self._h5 = None
        except BaseException as err:
            self._abort(err)
            raise
        ctx, self._ctx = self._ctx, None
        ctx.__exit__(None, None, None)  # rename temp -> final


def write_bag(path: Path | str, features: np.ndarray, coords: np.ndarray, attrs: Mapping[str, Any],
              dtype: str = "float32", chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Path:
    """Write a whole bag at once (atomic, ``complete`` last)."""
    features = np.asarray(features)
    with BagWriter(path, len(features), features.shape[1], attrs, dtype=dtype, chunk_rows=chunk_rows) as w:
        w.write(0, features, coords)
    return Path(path)


# --------------------------------------------------------------------------- reading


def read_bag_attrs(path: Path | str) -> dict[str, Any]:
    """Root attrs of an HDF5 bag (plain python values), without loading the features."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return {k: plain(v) for k, v in h5.attrs.items()}
    except OSError as exc:
        raise InputError(f"bag {path} cannot be opened as HDF5: {exc}") from None


def validate_bag(path: Path | str, expect: Mapping[str, Any] | None = None) -> list[str]:
    """Problems that make ``path`` unusable as a complete ghanet bag (empty list = valid).

    Checks the ``complete`` flag, schema version, required attrs, both datasets with matching row
    counts and shapes, and optional ``expect``ed attr values (floats compared with a tolerance).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        return [f"{path} does not exist"]
    problems: list[str] = []
    try:
        with h5py.File(path, "r") as h5:
            attrs = {k: plain(v) for k, v in h5.attrs.items()}
            if attrs.get("complete") is not True:
                return [f"{path} is incomplete (complete flag not set: the writer was interrupted)"]
            if attrs.get("schema_version") != BAG_SCHEMA_VERSION:
                problems.append(f"schema_version {attrs.get('schema_version')!r} != {BAG_SCHEMA_VERSION}")
            missing = [k for k in REQUIRED_ATTRS if k not in attrs]
            if missing:
                problems.append(f"missing attrs {', '.join(missing)}")
            if "features" not in h5 or "coords" not in h5:
                problems.append("missing dataset features or coords")
            else:
                f, c = h5["features"], h5["coords"]
                if f.ndim != 2 or c.ndim != 2 or c.shape[1] != 2 or f.shape[0] != c.shape[0]:
                    problems.append(f"bad shapes features {f.shape}, coords {c.shape}")
            for k, v in (expect or {}).items():
                if not same_setting(attrs.get(k), v):
                    problems.append(f"{k}={attrs.get(k)!r}, expected {v!r}")
    except OSError as exc:
        return [f"{path} cannot be read as HDF5: {exc}"]
    return [f"{path}: {p}" for p in problems]


def read_bag(path: Path | str, require_complete: bool = True) -> Bag:
    """Load a bag: ghanet ``.h5``, CLAM/TRIDENT ``.h5`` or CLAM ``.pt`` (features only).

    Raises :class:`InputError` naming the file when it is not a readable bag (or, for ghanet bags
    with ``require_complete``, when it was not completely written).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"bag {path} does not exist")
    if path.suffix.lower() == ".pt":
        return _read_pt(path)
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            attrs = {k: plain(v) for k, v in h5.attrs.items()}
            if "features" not in h5:
                raise InputError(f"{path} has no 'features' dataset; it is not a feature bag "
                                 f"(datasets: {', '.join(h5.keys()) or 'none'})")
            feats = np.asarray(h5["features"][()])
            coords = np.asarray(h5["coords"][()]) if "coords" in h5 else None
            coord_attrs = {k: plain(v) for k, v in h5["coords"].attrs.items()} if "coords" in h5 else {}
    except OSError as exc:
        raise InputError(f"bag {path} cannot be read as HDF5: {exc}") from None
    ours = "schema_version" in attrs and "encoder" in attrs
    if ours and require_complete and attrs.get("complete") is not True:
        raise InputError(f"bag {path} is incomplete (interrupted writer); rerun extract-features")
    feats = _as_2d(feats, path)
    if coords is not None:
        coords = np.asarray(coords).reshape(-1, coords.shape[-1]) if coords.ndim == 3 else coords
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(feats):
            raise InputError(f"bag {path}: coords shape {coords.shape} does not match features {feats.shape}")
        coords = coords.astype(np.int64, copy=False)
    if not ours:
        attrs = {**coord_attrs, **attrs, "format": "clam-h5", "slide_id": attrs.get("slide_id", path.stem)}
        if "encoder" not in attrs and trident_encoder_name(path):
            attrs["encoder"] = f"trident:{trident_encoder_name(path)}"  # TRIDENT names the folder after it
    return Bag(features=feats, coords=coords, attrs=attrs, path=path, format="ghanet" if ours else "clam-h5")


def _as_2d(feats: np.ndarray, path: Path) -> np.ndarray:
    if feats.ndim == 3 and feats.shape[0] == 1:  # TRIDENT / some CLAM forks: (1, N, D)
        feats = feats[0]
    if feats.ndim != 2:
        raise InputError(f"bag {path}: features have shape {feats.shape}; expected (N, D) or (1, N, D)")
    if not np.issubdtype(feats.dtype, np.floating):
        raise InputError(f"bag {path}: features have dtype {feats.dtype}; expected floats")
    return feats.astype(np.float32, copy=False)


def _read_pt(path: Path) -> Bag:
    import torch

    obj = torch_load_tensors(path, "CLAM bag", "A .pt bag must hold only the feature tensor (N, D), as "
                             "torch.save(features) writes it; re-save it that way in a trusted environment, or "
                             "use the .h5 bag", InputError)
    if isinstance(obj, dict):
        obj = obj.get("features", obj.get("feats"))
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"{path} does not hold a feature tensor (N, D); got {type(obj).__name__}")
    feats = _as_2d(obj.detach().float().numpy(), path)
    return Bag(features=feats, coords=None, attrs={"format": "clam-pt", "slide_id": path.stem}, path=path,
               format="clam-pt")


def find_bags(folder: Path | str, slide_ids: Iterable[str] | None = None) -> dict[str, Path]:
    """slide_id -> bag file in ``folder`` (``.h5`` preferred over ``.pt``; hidden temp files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"features folder {folder} does not exist; run extract-features or pass the "
                         f"folder holding the .h5 bags (e.g. <out>/features/resnet50_trunc_256)")
    found: dict[str, Path] = {}
    if not any(_is_bag_file(p) for p in folder.iterdir()):
        folder = trident_features_folder(folder)
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in (".h5", ".pt"):
            continue
        if p.stem not in found or p.suffix.lower() == ".h5":
            found[p.stem] = p
    if slide_ids is not None:
        wanted = set(slide_ids)
        found = {k: v for k, v in found.items() if k in wanted}
    return found


def _is_bag_file(p: Path) -> bool:
    return not p.name.startswith(".") and p.suffix.lower() in (".h5", ".pt") and p.is_file()


def trident_features_folder(folder: Path) -> Path:
    """The TRIDENT per-encoder bag folder (``features_<encoder>``, e.g. ``features_uni_v1``) inside
    ``folder`` or one level below (TRIDENT's ``<job>/20x_256px_0px_overlap/features_uni_v1``).

    Returns ``folder`` itself when there is none; raises :class:`InputError` listing them when there
    are several (the bags of different encoders must not be mixed: pass the one to use).
    """
    hits = sorted(p for p in list(folder.glob("features_*")) + list(folder.glob("*/features_*"))
                  if p.is_dir() and any(_is_bag_file(q) for q in p.iterdir()))
    if len(hits) > 1:
        raise InputError(f"features folder {folder} holds no bags itself but several encoder folders: "
                         f"{', '.join(str(h.relative_to(folder)) for h in hits)}; pass the one to use as --features")
    return hits[0] if hits else folder


def trident_encoder_name(path: Path) -> str | None:
    """``uni_v1`` for a bag in a TRIDENT ``features_uni_v1`` folder, else None."""
    name = Path(path).parent.name
    return name[len("features_"):] if name.startswith("features_") and len(name) > len("features_") else None


# --------------------------------------------------------------------------- compatibility


