"""A gdc-client download, laid out for tests and the cohort rehearsal, from a real MCAT table's slide ids.

:func:`pick_cases` takes whole cases (every slide row) from an MCAT-format table, multi-slide patients first,
and :func:`write_subtable` writes those rows back as a zip whose member name is MCAT's own kind
(``../dataset_csv_sig/../dataset_csv/<name>``). :func:`write_gdc_download` lays out what ``gdc-client download -m
MANIFEST.txt`` leaves: ``<root>/<file uuid>/<file name>`` (the table's ``slide_id``, e.g.
``TCGA-05-4249-01Z-00-DX1.9fce0297-....svs``), ``<root>/<file uuid>/logs/<file name>.parcel``, an
``annotations.txt`` and ``<root>/MANIFEST.txt`` (id, filename, md5, size, state). The slide files are small
synthetic slides (``wsi.synthetic``): the layout and names are real, the pixels are not.
"""

from __future__ import annotations

import hashlib
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.files import atomic_path

#: how MCAT names the member of its table zips (a name that climbs out of the folder it is extracted to)
MCAT_MEMBER = "../dataset_csv_sig/../dataset_csv/{name}"
_NS = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # the URL namespace: stable uuids from names


def read_mcat_rows(table: Path | str) -> pd.DataFrame:
    """The table's rows as text (every column), in file order; the nameless index column dropped."""
    from ..core.tables import read_table_file

    df = read_table_file(table)
    return df


def pick_cases(rows: pd.DataFrame, n_cases: int | None, seed: int = 0) -> pd.DataFrame:
    """Every row of ``n_cases`` cases (None = all): multi-slide patients first (up to half, those with the
    fewest slides first), then a seeded draw of the others; rows keep the table's order."""
    if n_cases is None or n_cases >= rows["case_id"].nunique():
        return rows.reset_index(drop=True)
    counts = rows.groupby("case_id", sort=False).size()
    multi = list(counts[counts > 1].sort_values(kind="stable").index)[: max(1, n_cases // 2)]
    single = [c for c in counts.index if c not in set(multi)]
    rng = np.random.default_rng(seed)
    chosen = set(multi) | set(rng.choice(single, size=n_cases - len(multi), replace=False).tolist())
    return rows[rows["case_id"].isin(chosen)].reset_index(drop=True)


def write_subtable(rows: pd.DataFrame, path: Path | str) -> Path:
    """Write ``rows`` as an MCAT-style ``.csv.zip`` whose single member has MCAT's climbing name."""
    path = Path(path)
    text = rows.to_csv(index=True)
    member = MCAT_MEMBER.format(name=path.name)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(member, date_time=(2021, 2, 11, 9, 10, 0)), text)
    return path


def file_uuid(name: str) -> str:
    """A stable stand-in for the GDC file uuid of ``name``."""
    return str(uuid.uuid5(_NS, f"gdc-file:{name}"))


def write_gdc_download(root: Path | str, names: Sequence[str], make_slide: Callable[[Path, int], object],
                       annotations: bool = True) -> Path:
    """Lay out a gdc-client download of ``names`` under ``root`` (module doc); returns MANIFEST.txt.

    ``make_slide(path, i)`` writes the i-th slide file; the manifest records its real size and MD5, so the
    download checks out until a test damages a file.
    """
    root = Path(root)
    lines = ["id\tfilename\tmd5\tsize\tstate"]
    for i, name in enumerate(names):
        fid = file_uuid(name)
        path = root / fid / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make_slide(path, i)
        (path.parent / "logs").mkdir(exist_ok=True)
        (path.parent / "logs" / f"{name}.parcel").write_bytes(b"\x00" * 64)
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        lines.append(f"{fid}\t{name}\t{digest}\t{path.stat().st_size}\treleased")
    if annotations and names:
        (root / file_uuid(names[0]) / "annotations.txt").write_text("id\tentity_type\tcategory\n")
    manifest = root / "MANIFEST.txt"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
