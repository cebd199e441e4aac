"""Heatmaps of a prediction: patch scores painted over the slide thumbnail (the paper's Fig. 5).

Two kinds of scores per patch, both from the model's forward pass on the case's bag:

- morphology attention ``w_mor`` (N,): the gated-attention weights of the survival branch
  (a softmax over the case's patches, so they sum to 1);
- per gene family, the *masked association*: the family's row of the association matrix ``assoc``
  (G x N, pre-softmax) keeps only its top ``topk`` share of patches (at least one), a softmax runs
  over the kept ones and every other patch gets 0. This is exactly the genomic weight the model's
  survival branch uses (``models.genomic_weights``); ``prediction`` computes it from ``assoc``.

Every image gets a colour bar with the unit ("share of the case's attention, x N": 1 = uniform)
and a legend for patches outside the top-k mask. The top patches of each family are written as
image tiles read at the model's target um/px. Pure array functions plus thin writers; no printing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.files import atomic_path
from ..core.ids import sanitize_id

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ..wsi.slide import Slide

#: colour map of every heatmap (perceptually uniform, readable in grey print)
CMAP = "inferno"
#: light blue used for tissue patches outside a family's top-k mask
MASKED_RGBA = (0.55, 0.75, 0.95, 0.45)


def top_indices(values: np.ndarray, k: int = 4) -> np.ndarray:
    """Indices of the ``k`` largest values (descending; ties by patch order); only values > 0."""
    values = np.asarray(values)
    order = np.argsort(-values, kind="stable")
    order = order[values[order] > 0]
    return order[:k]


def thumbnail_downsample(dimensions: tuple[int, int], thumb_px: int = 1600) -> float:
    """Level-0 px per thumbnail px so that the long side is about ``thumb_px`` (at least 1)."""
    return max(1.0, max(dimensions) / float(thumb_px))


def paint(shape_hw: tuple[int, int], coords_level0: np.ndarray, size_level0: int, values: np.ndarray,
          downsample: float) -> np.ndarray:
    """Raster of patch values at thumbnail resolution; NaN where no patch lies.

    ``coords_level0`` (N, 2) are level-0 top-left (x, y); ``size_level0`` the patch side in level-0
    px; ``downsample`` level-0 px per thumbnail px. Overlapping patches keep the larger value.
    """
    h, w = shape_hw
    grid = np.full((h, w), np.nan, dtype=np.float32)
    if len(coords_level0) == 0:
        return grid
    c = np.asarray(coords_level0, dtype=np.float64) / downsample
    side = max(1.0, size_level0 / downsample)
    x0 = np.clip(np.floor(c[:, 0]).astype(np.int64), 0, w)
    y0 = np.clip(np.floor(c[:, 1]).astype(np.int64), 0, h)
    x1 = np.clip(np.ceil(c[:, 0] + side).astype(np.int64), 0, w)
    y1 = np.clip(np.ceil(c[:, 1] + side).astype(np.int64), 0, h)
    vals = np.asarray(values, dtype=np.float32)
    for i in np.argsort(vals, kind="stable"):  # ascending: larger values painted last win overlaps
        if x1[i] > x0[i] and y1[i] > y0[i]:
            grid[y0[i]:y1[i], x0[i]:x1[i]] = vals[i]
    return grid


def blend(thumbnail: np.ndarray, grid: np.ndarray, vmax: float, alpha: float = 0.6,
          masked_grid: np.ndarray | None = None) -> np.ndarray:
    """RGB float image in [0, 1]: ``grid`` (NaN = none) coloured with :data:`CMAP` on 0..vmax and
    alpha-blended onto ``thumbnail``; ``masked_grid`` cells (non-NaN where ``grid`` is NaN) get
    :data:`MASKED_RGBA`."""
    import matplotlib

    img = thumbnail.astype(np.float32) / 255.0
    if masked_grid is not None:
        m = np.isfinite(masked_grid) & ~np.isfinite(grid)
        a = MASKED_RGBA[3]
        img[m] = img[m] * (1 - a) + np.asarray(MASKED_RGBA[:3], np.float32) * a
    has = np.isfinite(grid)
    if has.any():
        colours = matplotlib.colormaps[CMAP](np.clip(grid[has] / vmax, 0.0, 1.0))[:, :3].astype(np.float32)
        img[has] = img[has] * (1 - alpha) + colours * alpha
    return img


def _figure(figsize: tuple[float, float], dpi: int) -> Figure:
    """A ``Figure`` on its own Agg canvas: matplotlib's global backend and pyplot are never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: Path) -> None:
    """Lay out ``fig`` and write it as PNG atomically (the caller closes it)."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def render_png(path: Path, thumbnail: np.ndarray, grid: np.ndarray, title: str, colorbar_label: str,
               masked_grid: np.ndarray | None = None, masked_label: str = "", vmax: float | None = None) -> Path:
    """Write ``thumbnail`` with ``grid`` (NaN = transparent) on top, a colour bar and a legend (PNG).

    ``masked_grid`` marks patches (non-NaN) drawn in a flat colour explained in the legend (e.g.
    tissue outside a family's top-k mask). The colour scale runs from 0 to ``vmax`` (default: the
    grid's maximum). The overlay is blended in numpy and drawn as one image (fast for big thumbnails).
    """
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    h, w = thumbnail.shape[:2]
    finite = grid[np.isfinite(grid)]
    top = float(vmax if vmax is not None else (finite.max() if finite.size else 1.0))
    top = top if top > 0 else 1.0
    alpha = 0.6
    fig_w = 7.5
    fig = _figure((fig_w, max(3.0, fig_w * h / max(w, 1) * 0.85)), dpi=110)
    ax = fig.add_subplot()
    ax.imshow(blend(thumbnail, grid, top, alpha, masked_grid), interpolation="antialiased")
    cbar = fig.colorbar(ScalarMappable(Normalize(0.0, top), CMAP), ax=ax, fraction=0.046, pad=0.02)
    cbar.set_label(colorbar_label)
    handles = [Patch(facecolor=matplotlib.colormaps[CMAP](0.85), alpha=alpha, label="patch score (colour bar)")]
    if masked_grid is not None:
        handles.append(Patch(facecolor=MASKED_RGBA, label=masked_label or "not scored"))
    ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.85)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    _save_png(fig, path)
    return Path(path)


def write_tile(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)


def render_montage(path: Path, tiles: dict[str, list[tuple[np.ndarray, str]]], title: str) -> Path:
    """One PNG: a row per family with its top tiles, each captioned (slide, level-0 x/y, score)."""
    rows = list(tiles)
    n_cols = max([len(v) for v in tiles.values()] + [1])
    fig = _figure((2.2 * n_cols, 2.7 * len(rows)), dpi=100)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, fam in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(tiles[fam]):
                img, caption = tiles[fam][c]
                ax.imshow(img)
                ax.set_xlabel(caption, fontsize=6)
            else:
                ax.set_axis_off()
            if c == 0:
                ax.set_ylabel(fam, fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save_png(fig, path)
    return Path(path)


@dataclass
class SlideScores:
    """Patch scores of one slide of a case (rows of the case's bag that came from this slide).

    ``coords`` (n, 2) level-0 top-left; ``w_mor`` (n,); ``assoc_masked`` (G, n) masked association
    (already top-k masked over the whole case, ``models.genomic_weights``); ``scale`` = N of the
    whole case bag (values are shown x N so that 1 means "uniform attention").
    """

    slide_id: str
    slide_path: Path | None
    coords: np.ndarray
    w_mor: np.ndarray | None
    assoc_masked: np.ndarray | None
    n_case: int
    mpp_override: float | None = None
    patch_size_level0: int | None = None


@dataclass
class HeatmapResult:
    """Files written for one case and notes (e.g. a slide whose file is missing)."""

    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Labels:
    """Colour scales shared by all slides of a case (values x N) and the wording of the titles."""

    n_case: int
    vmax_mor: float
    vmax_fam: list[float]
    ens: str
    scope: str
    outside: str

    @classmethod
    def of(cls, slides: Sequence[SlideScores], n_families: int, topk: float, n_models: int) -> _Labels:
        def vmax(arrs: list[np.ndarray]) -> float:
            vals = [a for a in arrs if a is not None and a.size]
            return float(max((a.max() for a in vals), default=1.0))

        n_case = slides[0].n_case if slides else 1
        many = n_models > 1
        return cls(n_case=n_case,
                   vmax_mor=vmax([s.w_mor * n_case for s in slides if s.w_mor is not None]),
                   vmax_fam=[vmax([s.assoc_masked[g] * n_case for s in slides if s.assoc_masked is not None])
                             for g in range(n_families)],
                   ens=f", mean of {n_models} fold models" if many else "",
                   scope=f"top {topk:.0%} of patches per model" if many else f"top {topk:.0%} of patches",
                   outside=f"tissue outside every model's top {topk:.0%}" if many
                   else f"tissue outside the top {topk:.0%}")


def _slide_maps(out_dir: Path, name: str, s: SlideScores, thumb: np.ndarray, ds: float, size0: int,
                families: Sequence[str], fam_names: Sequence[str], lab: _Labels) -> list[Path]:
    """The morphology and per-family association PNGs of one slide."""
    files = []
    shape = thumb.shape[:2]
    if s.w_mor is not None:
        grid = paint(shape, s.coords, size0, s.w_mor * lab.n_case, ds)
        files.append(render_png(out_dir / f"{s.slide_id}_morphology.png", thumb, grid,
                                f"{name}: morphology attention w_mor ({lab.n_case} patches{lab.ens})",
                                "attention x N (1 = uniform)", vmax=lab.vmax_mor))
    if s.assoc_masked is not None:
        tissue = paint(shape, s.coords, size0, np.zeros(len(s.coords)), ds)
        for g, fam in enumerate(families):
            vals = s.assoc_masked[g] * lab.n_case
            kept = vals > 0
            grid = paint(shape, s.coords[kept], size0, vals[kept], ds)
            files.append(render_png(out_dir / f"{s.slide_id}_assoc_{fam_names[g]}.png", thumb, grid,
                                    f"{name}: {fam} association ({lab.scope}{lab.ens})", "masked association x N",
                                    masked_grid=tissue, masked_label=lab.outside, vmax=lab.vmax_fam[g]))
    return files


def _top_tiles(out_dir: Path, case_id: str, slides: Sequence[SlideScores], handles: dict[str, Any],
               families: Sequence[str], fam_names: Sequence[str], target_mpp: float, patch_size: int, n_top: int,
               n_case: int) -> list[Path]:
    """Per family the ``n_top`` patches of highest masked association over the case: one PNG each
    (``top/<family>_<rank>.png``) and the montage ``top_patches.png``."""
    files: list[Path] = []
    montage: dict[str, list[tuple[np.ndarray, str]]] = {}
    for g, fam in enumerate(families):
        cand = [(float(s.assoc_masked[g][i]), s, int(i)) for s in slides
                if s.assoc_masked is not None and s.slide_id in handles
                for i in top_indices(s.assoc_masked[g], n_top)]
        cand.sort(key=lambda t: -t[0])
        montage[fam] = []
        for rank, (score, s, i) in enumerate(cand[:n_top], start=1):
            slide = handles[s.slide_id]
            x, y = (int(v) for v in s.coords[i])
            tile = slide.read_patch(slide.plan(target_mpp, patch_size), x, y)
            files.append(write_tile(out_dir / "top" / f"{fam_names[g]}_{rank}.png", tile))
            montage[fam].append((tile, f"{s.slide_id} x={x} y={y}\nscore x N={score * n_case:.3g}"))
    files.append(render_montage(out_dir / "top_patches.png", montage,
                                f"{case_id}: top {n_top} patches per family (masked association)"))
    return files


def write_case_heatmaps(out_dir: Path, case_id: str, slides: Sequence[SlideScores], families: Sequence[str],
                        target_mpp: float, patch_size: int, topk: float, n_top: int = 4,
                        thumb_px: int = 1000, n_models: int = 1) -> HeatmapResult:
    """Write heatmaps and top tiles of one case under ``out_dir`` (= ``<out>/predict/heatmaps/<case>``).

    Per slide: ``<slide>_morphology.png``, ``<slide>_assoc_<family>.png`` and ``<slide>.geojson``
    (every patch as a QuPath detection with its scores, ``inference/qupath.py``). Per family: the
    ``n_top`` patches with the highest masked association over the whole case, read at
    ``target_mpp`` / ``patch_size`` (the model's settings) as ``top/<family>_<rank>.png``, plus
    ``top_patches.png`` (all families, one row each). The colour scale of a family is shared
    by all slides of the case. The thumbnail's long side is about ``thumb_px`` px (never upsampled).
    ``n_models`` > 1: the scores are means over that many fold models (said in the titles; a patch
    is coloured when it is in the top-k of at least one model).
    """
    from ..wsi.slide import Slide

    res = HeatmapResult()
    out_dir = Path(out_dir)
    fam_names = [sanitize_id(f, "family").replace(" ", "_") for f in families]  # shell-friendly file names
    lab = _Labels.of(slides, len(families), topk, n_models)
    handles: dict[str, Slide] = {}
    with contextlib.ExitStack() as stack:
        for s in slides:
            if s.slide_path is None or not Path(s.slide_path).exists():
                res.notes.append(f"slide {s.slide_id}: no slide file, heatmaps skipped")
                if s.patch_size_level0:  # the QuPath file needs no slide pixels
                    res.files.append(_geojson(out_dir, s, s.patch_size_level0, families, fam_names))
                continue
            slide = handles[s.slide_id] = stack.enter_context(Slide(s.slide_path, mpp=s.mpp_override,
                                                                    slide_id=s.slide_id))
            thumb, ds = slide.thumbnail(thumbnail_downsample(slide.dimensions, thumb_px))
            size0 = s.patch_size_level0 or slide.plan(target_mpp, patch_size).patch_size_level0
            res.files.append(_geojson(out_dir, s, size0, families, fam_names))
            name = case_id if s.slide_id == case_id else f"{case_id} / {s.slide_id}"
            res.files += _slide_maps(out_dir, name, s, thumb, ds, size0, families, fam_names, lab)
        if any(s.assoc_masked is not None for s in slides) and handles:
            res.files += _top_tiles(out_dir, case_id, slides, handles, families, fam_names, target_mpp, patch_size,
                                    n_top, lab.n_case)
    return res


def _geojson(out_dir: Path, s: SlideScores, size0: int, families: Sequence[str], fam_names: Sequence[str]) -> Path:
    """``<out_dir>/<slide>.geojson``: the slide's patches with ``attention`` and ``assoc_<family>``."""
    from .qupath import write_patch_geojson

    meas: dict[str, np.ndarray] = {}
    if s.w_mor is not None:
        meas["attention"] = s.w_mor
    if s.assoc_masked is not None:
        for g, _fam in enumerate(families):
            meas[f"assoc_{fam_names[g]}"] = s.assoc_masked[g]
    return write_patch_geojson(out_dir / f"{s.slide_id}.geojson", s.coords, size0, meas, slide_id=s.slide_id)
