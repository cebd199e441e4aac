"""Reading and validating the genomics inputs: MCAT-style tables, raw counts and clinical tables.

Both readers return a :class:`GenomicsData`: one row per case, survival in months, censorship
(1 = censored, 0 = event), and a cases x features matrix whose columns are feature names mapped to
gene symbols. Every error names the file, the row (1-based data row, i.e. line number minus the
header) and the column, and says how to fix it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.labels import censorship_from_event
from ..core.slideids import slide_id_from_name
from ..core.tables import NA_TEXT, decimal_comma_hint, read_table_file
from ..wsi.tcga import tcga_case_id

log = logging.getLogger(__name__)

#: MCAT feature columns: <GENE>_rnaseq | <GENE>_cnv | <GENE>_mut (matched by suffix, never by position)
FEATURE_SUFFIXES: tuple[str, ...] = ("_rnaseq", "_cnv", "_mut")
_FEATURE_RE = re.compile(r"^(?P<gene>.+)(?P<suffix>_rnaseq|_cnv|_mut)$")
#: GDC/STAR summary rows in counts files (not genes)
_STAR_SUMMARY_ROWS = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")
#: columns of a counts matrix that describe genes rather than samples
_GENE_COLUMNS = ("gene_id", "gene_name", "gene_type", "gene", "symbol", "gene_symbol", "hugo_symbol",
                 "entrez_gene_id", "ensembl_gene_id")


@dataclass
class GenomicsData:
    """Validated genomics inputs, one row per case.

    ``clinical``: index case_id; columns survival_months (float, >= 0), censorship (int 0/1),
    slide_ids (';'-joined, may be empty). ``features``: index case_id (same order), one column per
    feature, float64 (NaN only where ``allow_nan`` was given). ``feature_gene``: feature -> gene symbol.
    ``kind``: ``mcat`` or ``counts``. ``notes``: what was read and how (for the log and config.json).
    """

    kind: str
    clinical: pd.DataFrame
    features: pd.DataFrame
    feature_gene: dict[str, str]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def case_ids(self) -> list[str]:
        return list(self.clinical.index)


def to_numeric_frame(df: pd.DataFrame, path: Path | str, allow_nan: bool, what: str = "value",
                     row_labels: pd.Series | None = None) -> pd.DataFrame:
    """Convert text columns to float64; errors name the file, row and column of the first bad cell.

    Empty / NA cells are NaN: an error unless ``allow_nan``. ``row_labels`` (e.g. case ids) are
    quoted in messages next to the 1-based row number. Vectorised over the whole frame.
    """
    shape = df.shape
    num = np.empty(shape, dtype=np.float64)
    na = np.zeros(shape, dtype=bool)
    is_num = np.array([pd.api.types.is_numeric_dtype(t) for t in df.dtypes], dtype=bool)
    if is_num.any():                      # parsed by the C reader already
        num[:, is_num] = df.loc[:, is_num].to_numpy(dtype=np.float64)
        na[:, is_num] = np.isnan(num[:, is_num])
    if (~is_num).any():                   # text: strip, recognise NA spellings, parse
        text = df.loc[:, ~is_num].to_numpy(dtype=object)
        flat = pd.Series(text.ravel(order="C")).astype(str).str.strip()
        na[:, ~is_num] = flat.isin(NA_TEXT).to_numpy().reshape(text.shape)
        num[:, ~is_num] = pd.to_numeric(flat, errors="coerce").to_numpy(dtype=np.float64).reshape(text.shape)
    out = pd.DataFrame(num, index=df.index, columns=df.columns)
    bad = np.isnan(num) & ~na
    if bad.any():
        r, c = np.argwhere(bad)[0]
        n_bad = int(bad.sum())
        raise InputError(f"{path}: row {_row_desc(r, row_labels)}, column {df.columns[c]!r}: "
                         f"{what} {df.iat[r, c]!r} is not a number ({n_bad} such cell(s) in all); "
                         f"fix or remove these values" + decimal_comma_hint(df.iat[r, c], df.attrs.get("separator", ",")))
    if not allow_nan and na.any():
        r, c = np.argwhere(na)[0]
        n_na = int(na.sum())
        raise InputError(f"{path}: row {_row_desc(r, row_labels)}, column {df.columns[c]!r}: missing "
                         f"{what} ({n_na} missing cell(s) in all); fill them, drop the cases, or pass "
                         f"--impute train-mean (each fold's training mean)")
    inf = np.isinf(out.to_numpy())
    if inf.any():
        r, c = np.argwhere(inf)[0]
        raise InputError(f"{path}: row {_row_desc(r, row_labels)}, column {df.columns[c]!r}: "
                         f"{what} is infinite; fix the value")
    return out


def _row_desc(r: int, labels: pd.Series | None) -> str:
    """1-based data row (line r+2 of the file counting the header) plus the row's label."""
    base = f"{r + 1}"
    if labels is not None:
        base += f" ({labels.iloc[r]})"
    return base


def _find_col(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in df.columns}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def read_survival(df: pd.DataFrame, path: Path | str, notes: list[str]) -> pd.DataFrame:
    """Validate and return ``case_id, survival_months, censorship`` (+ ``slide_id`` if present) per row.

    Accepts ``censorship`` (1 = censored) or ``event`` / ``status`` (1 = death); says which was read.
    """
    cid = _find_col(df, ("case_id",))
    if cid is None:
        raise InputError(f"{path}: no 'case_id' column (columns: {', '.join(list(df.columns)[:12])}...); "
                         f"add one holding the patient id")
    tcol = _find_col(df, ("survival_months",))
    if tcol is None:
        raise InputError(f"{path}: no 'survival_months' column; add the follow-up / death time in months")
    ccol = _find_col(df, ("censorship",))
    ecol = _find_col(df, ("event", "status", "vital_status_event"))
    if ccol is None and ecol is None:
        raise InputError(f"{path}: neither a 'censorship' (1 = censored, 0 = death) nor an 'event' "
                         f"(1 = death) column; add one")
    case_ids = df[cid].astype(str).str.strip()
    empty = case_ids == ""
    if empty.any():
        r = int(np.flatnonzero(empty.to_numpy())[0])
        raise InputError(f"{path}: row {r + 1}, column {cid!r}: empty case id; fill it or drop the row")
    times = to_numeric_frame(df[[tcol]], path, allow_nan=True, what="survival time",
                             row_labels=case_ids)[tcol]
    if times.isna().any():
        r = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise InputError(f"{path}: row {r + 1} ({case_ids.iloc[r]}), column {tcol!r}: missing survival time "
                         f"({int(times.isna().sum())} in all); fill it or drop the case")
    if (times < 0).any():
        r = int(np.flatnonzero((times < 0).to_numpy())[0])
        raise InputError(f"{path}: row {r + 1} ({case_ids.iloc[r]}), column {tcol!r}: negative survival "
                         f"time {times.iloc[r]}; survival_months must be >= 0")
    use = ccol if ccol is not None else ecol
    status = to_numeric_frame(df[[use]], path, allow_nan=True, what="censorship", row_labels=case_ids)[use]
    bad = ~status.isin([0.0, 1.0])
    if bad.any():
        r = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}: row {r + 1} ({case_ids.iloc[r]}), column {use!r}: value "
                         f"{df[use].iloc[r]!r} is not 0 or 1 ({int(bad.sum())} such row(s)); "
                         + ("censorship must be 1 = censored (alive), 0 = event (death)" if use == ccol
                            else "event must be 1 = death, 0 = censored"))
    if ccol is not None:
        censorship = status.astype(int)
        notes.append(f"{Path(path).name}: read censorship from column {ccol!r} (1 = censored)")
        if ecol is not None:
            notes.append(f"{Path(path).name}: column {ecol!r} ignored (censorship wins)")
    else:
        censorship = pd.Series(censorship_from_event(status), index=status.index)
        notes.append(f"{Path(path).name}: read column {ecol!r} as event (1 = death); censorship = 1 - event")
    out = pd.DataFrame({"case_id": case_ids.to_numpy(), "survival_months": times.to_numpy(),
                        "censorship": censorship.to_numpy()})
    scol = _find_col(df, ("slide_id",))
    out["slide_id"] = "" if scol is None else [slide_id_from_name(v) for v in df[scol].astype(str)]
    if scol is not None:
        _check_slide_owners(out, path, scol)
    return out


def _check_slide_owners(surv: pd.DataFrame, path: Path | str, scol: str) -> None:
    """A slide id (after the slide-id rule) must belong to one case: else an error naming both rows."""
    has = surv[surv["slide_id"] != ""]
    owners = has.groupby("slide_id", sort=False)["case_id"].nunique()
    shared = owners[owners > 1]
    if shared.empty:
        return
    sid = str(shared.index[0])
    first = has[has["slide_id"] == sid].drop_duplicates("case_id").head(2)
    where = " and ".join(f"case {r.case_id!r} (row {int(i) + 1})" for i, r in first.iterrows())
    raise InputError(f"{path}: column {scol!r}: slide {sid!r} is claimed by {where} ({len(shared)} such slide(s) in "
                     f"all; a slide's id is its file name up to the first dot); a slide belongs to one patient: "
                     f"fix the case_id or the slide_id of one of these rows")


def _dedupe_cases(surv: pd.DataFrame, feats: pd.DataFrame | None, path: Path | str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One row per case; error naming the case and the differing columns when its rows disagree."""
    dup = surv["case_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        cols = ["survival_months", "censorship"]
        joined = surv[cols].copy()
        if feats is not None:
            joined = pd.concat([joined.reset_index(drop=True), feats.reset_index(drop=True)], axis=1)
        sub = joined[dup]
        keys = surv["case_id"][dup]
        for case, block in sub.groupby(keys.to_numpy(), sort=False):
            arr = block.to_numpy(dtype=np.float64)
            differs = ~(np.all((arr == arr[0]) | (np.isnan(arr) & np.isnan(arr[0])), axis=0))
            if differs.any():
                bad_cols = list(block.columns[differs])
                rows = ", ".join(str(int(i) + 1) for i in block.index)
                raise InputError(f"{path}: case {case!r} has {len(block)} rows ({rows}) that disagree on "
                                 f"{', '.join(bad_cols[:8])}{' ...' if len(bad_cols) > 8 else ''} "
                                 f"({len(bad_cols)} column(s)); one case must have one survival record and "
                                 f"one genomic profile — fix or drop the conflicting rows")
    slides = (surv[surv["slide_id"] != ""].groupby("case_id", sort=False)["slide_id"]
              .agg(lambda s: ";".join(dict.fromkeys(s))))
    first = ~surv["case_id"].duplicated()
    clinical = surv[first].set_index("case_id")[["survival_months", "censorship"]].copy()
    clinical["slide_ids"] = slides.reindex(clinical.index).fillna("")
    out_feats = None
    if feats is not None:
        out_feats = feats[first.to_numpy()].copy()
        out_feats.index = clinical.index
    return clinical, out_feats


def feature_columns(columns: list[str]) -> dict[str, str]:
    """Feature column -> gene symbol for columns named ``<GENE>_rnaseq|_cnv|_mut`` (suffix only)."""
    out = {}
    for c in columns:
        m = _FEATURE_RE.match(c)
        if m:
            out[c] = m.group("gene")
    return out


def read_mcat_table(path: Path | str, allow_nan: bool = False) -> GenomicsData:
    """Read an MCAT-style table (one row per slide, ``.csv`` or ``.csv.zip``).

    Features are the columns ending in ``_rnaseq``, ``_cnv`` or ``_mut``; every other column is
    metadata (kept out of the features, whatever its position). Rows of the same case must agree on
    survival and features; they are collapsed into one row per case.
    """
    df = read_table_file(path, numeric=lambda cols: feature_columns(cols))
    notes: list[str] = []
    surv = read_survival(df, path, notes)
    fmap = feature_columns(list(df.columns))
    if not fmap:
        raise InputError(f"{path}: no feature columns (names ending in {', '.join(FEATURE_SUFFIXES)}); "
                         f"is this an MCAT-style table? For raw counts pass --table COUNTS --clinical FILE")
    feats = to_numeric_frame(df[list(fmap)], path, allow_nan=allow_nan, what="feature value",
                             row_labels=surv["case_id"])
    clinical, feats = _dedupe_cases(surv, feats, path)
    counts_by_suffix = {s: sum(c.endswith(s) for c in fmap) for s in FEATURE_SUFFIXES}
    notes.append(f"{Path(path).name}: {len(df)} rows -> {len(clinical)} cases; feature columns by suffix: "
                 + ", ".join(f"{s} {n}" for s, n in counts_by_suffix.items())
                 + f"; {len(df.columns) - len(fmap)} other columns treated as metadata")
    return GenomicsData(kind="mcat", clinical=clinical, features=feats, feature_gene=fmap,
                        source=str(path), notes=notes)


def read_clinical(path: Path | str) -> tuple[pd.DataFrame, list[str]]:
    """Read a clinical table (``case_id``, ``survival_months``, ``censorship`` or ``event``[, slide_id]).

    Several rows per case (one per slide) are allowed when they agree. Returns (clinical indexed by
    case_id with survival_months, censorship, slide_ids; notes).
    """
    df = read_table_file(path)
    notes: list[str] = []
    surv = read_survival(df, path, notes)
    clinical, _ = _dedupe_cases(surv, None, path)
    return clinical, notes


def _match_samples(labels: list[str], case_ids: set[str]) -> dict[str, str]:
    """Sample label -> case id: exact match, else TCGA barcode prefix (first 12 characters)."""
    out = {s: s for s in labels if s in case_ids}
    if out:
        return out
    for s in labels:
        if len(s) > 12 and tcga_case_id(s) in case_ids:
            out[s] = tcga_case_id(s)
    return out


def _genes_by_samples(df: pd.DataFrame, col_match: dict[str, str], path: Path | str, allow_nan: bool,
                      notes: list[str]) -> pd.DataFrame:
    """Samples x genes counts from a genes x samples matrix: the symbol column (``gene_name`` and the like,
    else the first non-sample column), STAR summary rows dropped."""
    gene_cols = [c for c in df.columns if c not in col_match and c.lower() in _GENE_COLUMNS]
    other = [c for c in df.columns if c not in col_match and c not in gene_cols]
    sym_col = _find_col(df[gene_cols + other], ("gene_name", "gene_symbol", "symbol", "hugo_symbol", "gene"))
    if sym_col is None:
        sym_col = (gene_cols + other)[0] if (gene_cols + other) else None
    if sym_col is None:
        raise InputError(f"{path}: genes x samples matrix without a gene column; the first column must "
                         f"hold gene symbols")
    ignored = [c for c in other if c != sym_col]
    if ignored:
        notes.append(f"{Path(path).name}: columns ignored (not a case_id, no clinical data): {ignored[:6]}"
                     f"{' ...' if len(ignored) > 6 else ''}")
    genes = df[sym_col].astype(str).str.strip()
    keep = ~genes.isin(_STAR_SUMMARY_ROWS) & ~genes.str.startswith("__") & (genes != "")
    if int((~keep).sum()):
        notes.append(f"{Path(path).name}: dropped {int((~keep).sum())} summary/empty rows (N_unmapped, ...)")
    genes = genes[keep.to_numpy()]
    num = to_numeric_frame(df.loc[keep.to_numpy(), list(col_match)].reset_index(drop=True), path,
                           allow_nan=allow_nan, what="count", row_labels=genes.reset_index(drop=True))
    num.index = genes.to_numpy()
    return num.T


def _samples_by_genes(df: pd.DataFrame, row_labels: list[str], row_match: dict[str, str], path: Path | str,
                      allow_nan: bool, notes: list[str]) -> pd.DataFrame:
    """Samples x genes counts from a samples x genes matrix (samples without clinical data are noted)."""
    labels = pd.Series([lab for lab in row_labels if lab in row_match])
    values = df.loc[[lab in row_match for lab in row_labels], list(df.columns[1:])]
    mat = to_numeric_frame(values.reset_index(drop=True), path, allow_nan=allow_nan, what="count",
                           row_labels=labels)
    mat.index = labels.to_numpy()
    mat.columns = [str(c).strip() for c in mat.columns]
    extra = [lab for lab in row_labels if lab not in row_match]
    if extra:
        notes.append(f"{len(extra)} sample(s) of {Path(path).name} have no clinical data and are left out: "
                     f"{extra[:5]}{' ...' if len(extra) > 5 else ''}")
    return mat


def _one_row_per_case(mat: pd.DataFrame, matches: dict[str, str], path: Path | str, notes: list[str]
                      ) -> pd.DataFrame:
    """Rows renamed to case ids (one sample per case) and columns sharing a gene symbol summed."""
    mat.index = [matches[s] for s in mat.index]
    if mat.index.duplicated().any():
        dups = sorted(set(mat.index[mat.index.duplicated()]))
        raise InputError(f"{path}: several samples map to case(s) {dups[:5]}; keep one sample per case "
                         f"(e.g. the primary tumour -01A) or rename the columns to case ids")
    if mat.columns.duplicated().any():
        n_dup = int(mat.columns.duplicated().sum())
        mat = mat.T.groupby(level=0, sort=False).sum(min_count=1).T
        notes.append(f"{Path(path).name}: {n_dup} rows with a repeated gene symbol summed")
    return mat


def read_counts(path: Path | str, clinical_path: Path | str, allow_nan: bool = False) -> GenomicsData:
    """Read a raw-counts matrix (genes x samples or samples x genes) and its clinical table.

    Orientation is detected by matching sample ids to the clinical case ids (exactly, else by TCGA
    barcode: the first 12 characters of a sample barcode). Genes x samples matrices may carry
    ``gene_id`` / ``gene_name`` / ``gene_type`` columns (GDC STAR): ``gene_name`` is used as the symbol
    when present, STAR summary rows (``N_unmapped``, ...) are dropped, and rows sharing a symbol are
    summed (counts are additive). Cases without counts or without clinical data are left out (noted).
    """
    clinical, notes = read_clinical(clinical_path)
    case_set = set(clinical.index)
    df = read_table_file(path, numeric=lambda cols: list(_match_samples(cols, case_set)) or cols[1:])
    if df.shape[1] < 2:
        raise InputError(f"{path}: counts matrix has fewer than 2 columns")
    col_match = _match_samples(list(df.columns), case_set)
    row_labels = df[df.columns[0]].astype(str).str.strip().tolist()
    row_match = _match_samples(row_labels, case_set)
    if not col_match and not row_match:
        raise InputError(f"{path}: no sample id matches a case_id of {clinical_path} (e.g. columns "
                         f"{list(df.columns)[1:4]}, rows {row_labels[:3]}, cases {sorted(case_set)[:3]}); "
                         f"the header or first column must hold the case ids (or TCGA sample barcodes)")
    if len(col_match) >= len(row_match):
        orientation = "genes x samples"
        mat = _one_row_per_case(_genes_by_samples(df, col_match, path, allow_nan, notes), col_match, path, notes)
    else:
        orientation = "samples x genes"
        mat = _one_row_per_case(_samples_by_genes(df, row_labels, row_match, path, allow_nan, notes), row_match,
                                path, notes)
    common = [c for c in clinical.index if c in set(mat.index)]
    no_counts = [c for c in clinical.index if c not in set(mat.index)]
    if no_counts:
        notes.append(f"{len(no_counts)} case(s) of {Path(clinical_path).name} have no counts and are left "
                     f"out: {no_counts[:5]}{' ...' if len(no_counts) > 5 else ''}")
    if len(common) < 4:
        raise InputError(f"{path}: only {len(common)} case(s) have both counts and clinical data; need more")
    notes.append(f"{Path(path).name}: counts read as {orientation}; {len(common)} cases x {mat.shape[1]} genes")
    feats = mat.loc[common]
    feats.index.name = "case_id"
    return GenomicsData(kind="counts", clinical=clinical.loc[common], features=feats,
                        feature_gene={c: c for c in feats.columns}, source=str(path), notes=notes)


def first_non_count(features: pd.DataFrame) -> tuple[str, str, float] | None:
    """(case_id, column, value) of the first value that is not a non-negative integer, else None."""
    x = features.to_numpy()
    bad = ~np.isfinite(x) | (x < 0) | (np.floor(np.nan_to_num(x)) != np.nan_to_num(x))
    if not bad.any():
        return None
    r, c = np.argwhere(bad)[0]
    return str(features.index[r]), str(features.columns[c]), float(x[r, c])
