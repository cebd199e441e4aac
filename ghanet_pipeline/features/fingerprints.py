"""Content hashes of feature bags: the ``features_sha256`` attr written at extract time, or the features
hashed once per process when a bag lacks it (older ghanet, CLAM/TRIDENT bags)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.files import file_sha256
from ..core.fingerprints import DIGEST_CHARS

#: bag attr holding :func:`features_sha256` of the bag's features (written by ``extract-features``)
FEATURES_SHA_ATTR = "features_sha256"


_BAG_CACHE: dict[tuple[str, int, int], str] = {}


def features_sha256(features: Any, chunk_rows: int = 4096) -> str:
    """Full hex SHA-256 of a features array or HDF5 dataset: dtype, shape, then little-endian rows.

    Read ``chunk_rows`` rows at a time, so an HDF5 dataset is never loaded whole.
    """
    dtype = np.dtype(features.dtype).newbyteorder("<")
    shape = tuple(int(s) for s in features.shape)
    h = hashlib.sha256(f"{dtype.str}:{shape}".encode())
    n = shape[0] if shape else 0
    for start in range(0, n, chunk_rows):
        block = np.ascontiguousarray(np.asarray(features[start:start + chunk_rows]), dtype=dtype)
        h.update(memoryview(block).cast("B"))
    return h.hexdigest()


def bag_content_sha(path: Path | str) -> str:
    """16-hex content hash of one bag: its recorded ``features_sha256`` attr, else the features hashed.

    ``.h5`` bags without the attr (older ghanet, CLAM/TRIDENT) hash their ``features`` dataset and ``.pt``
    bags their file bytes; the result is cached for the process by (path, size, mtime).
    """
    import h5py

    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _BAG_CACHE:
        return _BAG_CACHE[key]
    if p.suffix.lower() == ".pt":
        sha = "file:" + file_sha256(p)[:DIGEST_CHARS]
    else:
        try:
            with h5py.File(p, "r") as h5:
                rec = h5.attrs.get(FEATURES_SHA_ATTR)
                if isinstance(rec, bytes):
                    rec = rec.decode()
                if rec:
                    sha = str(rec)[:DIGEST_CHARS]  # recorded at extract time: no data read
                elif "features" not in h5:
                    raise InputError(f"{p} has no 'features' dataset; it is not a feature bag")
                else:
                    sha = features_sha256(h5["features"])[:DIGEST_CHARS]
        except OSError as exc:
            raise InputError(f"bag {p} cannot be read as HDF5: {exc}") from None
    _BAG_CACHE[key] = sha
    return sha
