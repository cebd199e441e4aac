"""Reading the tables users hand us (CSV/TSV, optionally compressed) with errors that name the file.

One reader for every table a stage reads: genomics tables, gene families, fold splits, predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: cell texts read as missing values
NA_TEXT = ("", "NA", "NaN", "nan", "N/A", "na", "null", "NULL", "None", ".")


def read_table_file(path: Path | str,
                    numeric: Callable[[list[str]], Iterable[str]] | None = None) -> pd.DataFrame:
    """Read a CSV/TSV (optionally ``.zip``/``.gz`` compressed); columns are text unless numeric.

    The separator comes from the name (``.tsv``/``.txt``/``.tab`` -> tab, else comma; a ``.csv`` whose
    header holds tabs is read as TSV). ``numeric(header) -> columns`` names columns parsed as numbers by
    the fast C parser (NA spellings -> NaN); a column holding text stays text so that
    :func:`to_numeric_frame` can name the bad cell. Raises InputError when the file is missing or
    unreadable.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    name = path.name.lower()
    for ext in (".zip", ".gz", ".bz2", ".xz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    sep = "\t" if name.endswith((".tsv", ".txt", ".tab")) else ","
    try:
        header = list(pd.read_csv(path, sep=sep, nrows=0).columns)
        if len(header) == 1 and "\t" in str(header[0]) and sep == ",":
            sep = "\t"  # a TSV named .csv
            header = list(pd.read_csv(path, sep=sep, nrows=0).columns)
        num = set(numeric([str(c).strip() for c in header])) if numeric is not None else set()
        if num:
            # numbers parsed by the C reader; a numeric column holding text comes back as text
            df = pd.read_csv(path, sep=sep, keep_default_na=False, na_values=list(NA_TEXT),
                             dtype={c: str for c in header if str(c).strip() not in num})
            for c in header:
                if str(c).strip() not in num and df[c].dtype == object:
                    df[c] = df[c].fillna("")
        else:
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as CSV/TSV ({exc}); give a comma- or tab-separated "
                         f"table (.csv, .tsv, optionally .zip/.gz)") from None
    df.columns = [str(c).strip() for c in df.columns]
    # a nameless first column is a written-out pandas index (MCAT tables have one): drop it
    if len(df.columns) and (df.columns[0] == "" or df.columns[0].startswith("Unnamed: 0")):
        df = df.drop(columns=df.columns[0])
    return df
