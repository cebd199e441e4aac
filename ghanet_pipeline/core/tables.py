"""Reading the tables users hand us (CSV/TSV, optionally compressed) with errors that name the file.

One reader for every table a stage reads: genomics tables, gene families, fold splits, predictions.
Tables come as spreadsheets save them: the separator is the one the header line uses (``,``, ``;`` or
tab), a UTF-8 byte-order mark and CRLF line ends are accepted (Excel's "CSV UTF-8"; in decimal-comma
locales it separates fields with ``;``). ``.zip`` / ``.gz`` / ``.bz2`` / ``.xz`` files are read in memory;
a zip member is never extracted, whatever its name (MCAT's own zips name theirs
``../dataset_csv_sig/../dataset_csv/<table>.csv.zip``). Two columns of one name are an error (pandas
would silently rename the second ``<name>.1``).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: cell texts read as missing values
NA_TEXT = ("", "NA", "NaN", "nan", "N/A", "na", "null", "NULL", "None", ".")


#: separators a table may use, most specific first
SEPARATORS = ("\t", ";", ",")


def sniff_separator(header: str, default: str = ",") -> str:
    """The separator of a header line: the one that splits it into the most fields (ties: tab, ``;``,
    ``,``); ``default`` when none occurs. Quoted names holding a separator are rare in headers and not
    considered."""
    line = header.lstrip("\ufeff").rstrip("\r\n")
    counts = {s: line.count(s) for s in SEPARATORS}
    best = max(SEPARATORS, key=lambda s: counts[s])
    return best if counts[best] else default


def decimal_comma_hint(value: object, sep: str) -> str:
    """A hint for a number written with a decimal comma (``1,5``) in a ``;``-separated file, else ""."""
    text = str(value).strip()
    if sep == ";" and "," in text and text.replace(",", "", 1).lstrip("+-").replace(".", "", 1).isdigit():
        return " (a decimal comma? save the table with '.' as the decimal mark, or export it as CSV from a locale that does)"
    return ""


def first_line(path: Path) -> str:
    """The first text line of a (possibly compressed) file, read in memory (a zip member is never extracted)."""
    name = path.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise InputError(f"{path}: a zip of {len(members)} files; it must hold exactly one table")
            with zf.open(members[0]) as fh:
                raw = fh.readline(1 << 24)
    else:
        opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(Path(name).suffix, open)
        with opener(path, "rb") as fh:
            raw = fh.readline(1 << 24)
    return raw.decode("utf-8-sig", errors="replace")


def read_table_file(path: Path | str,
                    numeric: Callable[[list[str]], Iterable[str]] | None = None) -> pd.DataFrame:
    """Read a CSV/TSV (optionally ``.zip``/``.gz``/``.bz2``/``.xz`` compressed); columns are text unless numeric.

    The separator is the one the header line uses (``,``, ``;`` or tab; a header without any: comma).
    ``numeric(header) -> columns`` names columns parsed as numbers by the fast C parser (NA spellings ->
    NaN); a column holding text stays text so that :func:`to_numeric_frame` can name the bad cell.
    Raises InputError when the file is missing or unreadable, or two columns share a name.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        line = first_line(path)
        sep = sniff_separator(line)
        raw = next(csv.reader([line.rstrip("\r\n")], delimiter=sep), [])
        header = [c.strip() for c in raw]
        _check_unique(header, path)
        num = set(numeric(header)) if numeric is not None else set()
        opts = {"sep": sep, "encoding": "utf-8-sig", "keep_default_na": False}
        if num:
            # numbers parsed by the C reader; a numeric column holding text comes back as text
            df = pd.read_csv(path, na_values=list(NA_TEXT), dtype={c: str for c in raw if c.strip() not in num},
                             **opts)
            for c in df.columns:
                if str(c).strip() not in num and df[c].dtype == object:
                    df[c] = df[c].fillna("")
        else:
            df = pd.read_csv(path, dtype=str, **opts)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: cannot read as CSV/TSV ({exc}); give a comma-, semicolon- or tab-separated "
                         f"UTF-8 table (.csv, .tsv, optionally .zip/.gz)") from None
    df.columns = [str(c).strip() for c in df.columns]
    # a nameless first column is a written-out pandas index (MCAT tables have one): drop it
    if len(df.columns) and (df.columns[0] == "" or df.columns[0].startswith("Unnamed: 0")):
        df = df.drop(columns=df.columns[0])
    df.attrs["separator"] = sep
    return df


def _check_unique(header: list[str], path: Path) -> None:
    """Two columns of one name: an error naming both positions (1-based), never a silent ``<name>.1``."""
    first: dict[str, int] = {}
    for j, c in enumerate(header, start=1):
        if c and c in first:
            n = sum(h == c for h in header)
            raise InputError(f"{path}: columns {first[c]} and {j} are both named {c!r} ({n} columns of that name"
                             f"{'' if n == 2 else ' in all'}); keep one (a gene measured twice must be merged or "
                             f"renamed before training)")
        first.setdefault(c, j)
