"""Demo sizes that work: the smallest slide and cohort, and the up-front check of ``ghanet demo``'s options.

A size at which a stage would fail halfway (slides without tissue, a fold without enough high- or
low-risk training cases for the differential selection) is refused before anything is written, naming
the option and the smallest value that works.
"""

from __future__ import annotations

from ..core.errors import OptionValueError
from .config import DemoConfig

#: smallest ``slide_px``: the synthetic tissue blobs scale with the slide, and on small slides many are
#: smaller than `segment`'s default minimum tissue piece (0.05 mm^2), leaving a slide without patches.
#: Slides without any patch under `segment`'s defaults (seeded slides, random phenotypes, docs/demo.md):
#: 56 of 60 at 512 px, 9 of 60 at 768 px, 6 of 400 at 1024 px, none of 400 at 1536 px (at least 6 patches)
MIN_SLIDE_PX = 1536
#: smallest ``n_cases`` accepted at all; whether a given (cases, folds, seed) works is checked exactly by
#: :func:`check_config` (every fold needs 2 high-risk and 2 low-risk training cases)
MIN_CASES = 8


def _fold_problem(n_cases: int, folds: int, seed: int) -> str | None:
    """Why ``preprocess-genomics`` would fail on the demo cohort of ``n_cases`` (``seed``) with ``folds``
    folds, or None when every fold's training cases hold enough high- and low-risk cases.

    Exact: the cohort, the folds (made with preprocess-genomics' own defaults, which the demo does not
    change) and the risk groups are computed by the same functions the stage uses.
    """
    from ..genomics.config import GenomicsConfig
    from ..genomics.folds import make_folds
    from ..genomics.per_fold import fold_group_sizes
    from ..genomics.selection import MIN_GROUP
    from .cohort import make_cohort

    if folds > n_cases:
        return f"more folds ({folds}) than cases"
    gcfg = GenomicsConfig(table="", families="", folds=folds)  # the stage's defaults: protocol, seed, bins
    cases = make_cohort(n_cases=n_cases, seed=seed).cases
    sizes = fold_group_sizes(cases, make_folds(cases, folds, gcfg.seed, gcfg.n_bins), gcfg.bins_from,
                             gcfg.n_bins)
    bad = [(k, hi, lo) for k, (hi, lo) in enumerate(sizes) if hi < MIN_GROUP or lo < MIN_GROUP]
    if not bad:
        return None
    shown = ", ".join(f"fold {k}: {hi} high-risk and {lo} low-risk" for k, hi, lo in bad[:3])
    more = f" (and {len(bad) - 3} more folds)" if len(bad) > 3 else ""
    return (f"the training cases of {shown}{more}; preprocess-genomics' differential selection needs at least "
            f"{MIN_GROUP} high-risk (event in survival bins 0-1) and {MIN_GROUP} low-risk (bins 2-3) training "
            f"cases in every fold")


def check_config(config: DemoConfig, max_cases: int = 500) -> None:
    """Refuse, before anything is written, demo sizes at which a stage would fail halfway.

    ``slide_px`` below :data:`MIN_SLIDE_PX` (slides without tissue), ``n_cases`` below :data:`MIN_CASES`,
    or a cohort whose folds leave fewer than 2 high-risk or 2 low-risk training cases in some fold
    (checked exactly for this ``n_cases``, ``folds`` and ``seed``). Raises :class:`OptionValueError`
    naming the option and the smallest value above the one given that works (searched up to ``max_cases``).
    """
    if config.slide_px < MIN_SLIDE_PX:
        raise OptionValueError("--slide-px", f"{config.slide_px} px is too small: most synthetic slides would "
                                             f"have no tissue patches; the smallest that works is {MIN_SLIDE_PX}")
    if config.n_cases < MIN_CASES:
        raise OptionValueError("--cases", f"{config.n_cases} is too few; the smallest accepted is {MIN_CASES}")
    if config.folds < 2:
        raise OptionValueError("--folds", f"{config.folds}: cross-validation needs at least 2 folds")
    problem = _fold_problem(config.n_cases, config.folds, config.seed)
    if problem is None:
        return
    works = next((n for n in range(config.n_cases + 1, max(max_cases, config.n_cases) + 1)
                  if _fold_problem(n, config.folds, config.seed) is None), None)
    where = f"--folds {config.folds} --seed {config.seed}"
    hint = (f"The smallest --cases above {config.n_cases} that works with {where} is {works}" if works is not None
            else f"No --cases up to {max_cases} works with {where}; use fewer folds")
    raise OptionValueError("--cases", f"{config.n_cases} is too few for {where}: {problem}. {hint}")
