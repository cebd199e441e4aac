"""Which slides a command works on: files, directories, globs or a manifest CSV -> :class:`SlideSpec`."""

from __future__ import annotations

import csv
import glob
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError, InputError, ManifestError
from ..core.ids import sanitize_ids
from ..core.slideids import slide_id_from_name
from ..core.tables import decimal_comma_hint, sniff_separator
from .dicom import is_dicom_file, is_dicom_folder
from .gdc import is_download_aux
from .tcga import tcga_case_id

__all__ = ["SLIDE_EXTENSIONS", "SlideSpec", "case_id_for", "collect_slides", "parse_shard", "read_manifest",
           "sanitise_specs", "take_shard", "tcga_case_id"]

#: File endings OpenSlide reads (used when a directory is given). DICOM WSI instances (``.dcm`` or
#: ending-less files with the DICM marker) make their folder one slide, named after the folder.
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                    ".bif", ".dcm", ".czi")


@dataclass
class SlideSpec:
    """One slide to process.

    ``slide_id`` is already sanitised (safe as a file name stem); ``raw_slide_id`` is the id the user
    gave, after the slide-id rule (``core.slideids``). ``mpp`` is a level-0 um/px override (None = read it
    from the slide). ``problem``: why this slide fails before any work (a GDC download that is missing or
    damaged, ``wsi.gather``); "" = none.
    """

    slide_id: str
    path: Path
    case_id: str
    mpp: float | None = None
    raw_slide_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    problem: str = ""


def case_id_for(slide_id: str, given: str | None, case_id_from: str | None) -> str:
    """A slide's case: the manifest's ``case_id`` when given, else by ``--case-id-from`` (tcga: the
    first 12 characters), else the slide id itself."""
    if given:
        return given
    if case_id_from == "tcga":
        return tcga_case_id(slide_id)
    return slide_id


def _manifest_rows(manifest: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, {column: stripped value}) of each non-blank row; header problems, rows with too many
    fields and files that are not UTF-8 CSV raise :class:`ManifestError`. The separator is the header's
    (``,``, ``;`` or tab); a byte-order mark and CRLF line ends are fine (a table saved by Excel)."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sniff_separator(text.split("\n", 1)[0]))
        cols = [c.strip() for c in next(reader, [])]
        missing = [c for c in ("slide_id", "path") if c not in cols]
        if missing:
            raise ManifestError(f"manifest {manifest}: missing column(s) {', '.join(missing)}; "
                                f"expected a header like 'slide_id,path,case_id,mpp'")
        dup = sorted({c for c in cols if c and cols.count(c) > 1})
        if dup:
            raise ManifestError(f"manifest {manifest}: column(s) {', '.join(dup)} appear more than once in "
                                f"the header; keep one of each")
        rows = []
        for i, values in enumerate(reader, start=2):  # row 1 is the header
            if not any(v.strip() for v in values):
                continue  # blank line
            if len(values) > len(cols):
                raise ManifestError(f"manifest {manifest}, row {i}: {len(values)} fields but the header has "
                                    f"{len(cols)}; quote values that contain the separator")
            rows.append((i, {k: v.strip() for k, v in zip(cols, values + [""] * (len(cols) - len(values)),
                                                          strict=False)}))
        return rows
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {manifest} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                            f"save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise ManifestError(f"manifest {manifest} is not a readable CSV ({exc})") from None


def _row_mpp(manifest: Path, i: int, row: dict[str, str]) -> float | None:
    """The row's level-0 um/px override (None when the mpp column is absent or empty)."""
    if not row.get("mpp"):
        return None
    try:
        mpp = float(row["mpp"])
    except ValueError:
        mpp = math.nan
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ManifestError(f"manifest {manifest}, row {i}, column mpp: {row['mpp']!r} is not a "
                            f"positive number of um per pixel (e.g. 0.25 for 40x, 0.5 for 20x)"
                            + decimal_comma_hint(row["mpp"], ";" if "," in row["mpp"] else ","))
    return mpp


def read_manifest(manifest: Path | str, case_id_from: str | None = None) -> list[SlideSpec]:
    """Read ``slide_id,path[,case_id][,mpp]`` (+ any other columns, kept in ``extra``).

    ``slide_id`` goes through the slide-id rule (a GDC file name -> the part before its first dot).
    ``path`` is relative to the manifest's folder. Duplicate slide ids, missing columns, empty
    paths and bad ``mpp`` values raise :class:`ManifestError` (a usage error, exit 2) naming the row.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"manifest {manifest} does not exist")
    specs: list[SlideSpec] = []
    seen: dict[str, int] = {}
    for i, row in _manifest_rows(manifest):
        sid = slide_id_from_name(row["slide_id"])
        if not sid:
            raise ManifestError(f"manifest {manifest}, row {i}: empty slide_id")
        if sid in seen:
            named = "" if sid == row["slide_id"] else f" ({row['slide_id']!r}: a slide's id is its name up to the first dot)"
            raise ManifestError(f"manifest {manifest}, row {i}: slide_id {sid!r}{named} already used in row "
                                f"{seen[sid]}; slide ids must be unique")
        seen[sid] = i
        if not row["path"]:
            raise ManifestError(f"manifest {manifest}, row {i} (slide {sid!r}): empty path")
        path = Path(row["path"])
        extra = {k: v for k, v in row.items() if k not in ("slide_id", "path", "case_id", "mpp")}
        specs.append(SlideSpec(slide_id=sid, path=path if path.is_absolute() else manifest.parent / path,
                               case_id=case_id_for(sid, row.get("case_id"), case_id_from),
                               mpp=_row_mpp(manifest, i, row), raw_slide_id=sid, extra=extra))
    if not specs:
        raise ManifestError(f"manifest {manifest} lists no slides")
    return sanitise_specs(specs)


def sanitise_specs(specs: list[SlideSpec]) -> list[SlideSpec]:
    """Give each spec a file-name-safe ``slide_id`` (keeping the given one in ``raw_slide_id``);
    two ids that would become the same file name raise :class:`InputError`."""
    mapping = sanitize_ids([s.raw_slide_id or s.slide_id for s in specs], what="slide_id")
    for s in specs:
        s.raw_slide_id = s.raw_slide_id or s.slide_id
        s.slide_id = mapping[s.raw_slide_id]
    return specs


def collect_slides(inputs: Sequence[str | Path] = (), manifest: Path | str | None = None,
                   recursive: bool = False, case_id_from: str | None = None,
                   mpp: float | None = None) -> list[SlideSpec]:
    """Resolve slide files, directories, glob patterns and/or a manifest into slide specs.

    A path that does not exist is kept (it fails later as that slide's error, so the other slides
    still run). ``mpp`` overrides every slide's level-0 um/px unless the manifest gives one.
    Duplicate slide ids are an error.
    """
    if case_id_from not in (None, "slide_id", "tcga"):
        raise ConfigError(f"--case-id-from must be 'slide_id' or 'tcga', not {case_id_from!r}")
    specs: list[SlideSpec] = []
    if manifest is not None:
        specs.extend(read_manifest(manifest, case_id_from))
    dicom_seen: set[Path] = set()
    for item in inputs:
        text = str(item)
        p = Path(text)
        if p.is_dir() and is_dicom_folder(p):
            files = [p]  # a DICOM WSI: the folder of its instances is the slide
        elif p.is_dir():
            pattern = "**/*" if recursive else "*"
            found = [f for f in sorted(p.glob(pattern)) if not is_download_aux(f.relative_to(p))]  # gdc-client's logs/ ...
            files = [f for f in found if f.is_file() and f.suffix.lower() in SLIDE_EXTENSIONS
                     and f.suffix.lower() != ".dcm"]
            files += sorted({f.parent for f in found if is_dicom_file(f)})
            if not files:
                raise InputError(f"directory {p} holds no slide files ({', '.join(SLIDE_EXTENSIONS)}) or DICOM "
                                 f"WSI folders" + ("" if recursive else "; pass --recursive to look in sub-folders"))
        elif any(ch in text for ch in "*?[") and not p.exists():
            files = sorted(Path(f) for f in glob.glob(text, recursive=recursive) if Path(f).is_file())
            if not files:
                raise InputError(f"pattern {text!r} matches no files")
        else:
            files = [p]
        for f in files:
            if f.is_dir() or is_dicom_file(f):  # DICOM: one slide per folder, named after it
                folder = (f if f.is_dir() else f.parent).resolve()
                if folder in dicom_seen:
                    continue  # another instance (level, label, ...) of a slide already listed
                dicom_seen.add(folder)
                sid = folder.name
            else:
                sid = slide_id_from_name(f.name)
            specs.append(SlideSpec(slide_id=sid, path=f, case_id=case_id_for(sid, None, case_id_from),
                                   raw_slide_id=sid))
    if not specs:
        raise ConfigError("no slides given: pass slide files, directories, glob patterns or --manifest")
    seen: dict[str, Path] = {}
    for s in specs:
        if s.raw_slide_id in seen:
            raise InputError(f"slide_id {s.raw_slide_id!r} is used twice ({seen[s.raw_slide_id]} and {s.path}); "
                             f"slide ids must be unique - rename a file or use a manifest")
        seen[s.raw_slide_id] = s.path
        if mpp is not None and s.mpp is None:
            s.mpp = mpp
    return sanitise_specs(specs)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``--shard i/n`` (0-based i < n)."""
    if text is None:
        return None
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), not {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return i, n


def take_shard(items: list, shard: tuple[int, int] | None) -> list:
    """Every n-th item starting at i (a stable split of a sorted list across cluster jobs)."""
    if shard is None:
        return items
    i, n = shard
    return items[i::n]
