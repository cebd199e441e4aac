"""The demo's sizes and options (:class:`DemoConfig`), shared by the run and its up-front size check."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DemoConfig:
    """Sizes of the demo cohort and of the runs (defaults finish in < 10 min on 2 CPU cores).

    Slides are ``slide_px`` x ``slide_px`` level-0 px at 0.5 um/px (20x); at 256 px per patch that is
    at most ``(slide_px / 256)**2`` patches, in practice about 40 % of it (tissue blobs on glass).
    """

    n_cases: int = 40
    n_holdout: int = 4
    folds: int = 5
    epochs: int = 20
    slide_px: int = 2048
    seed: int = 0
    models: tuple[str, ...] = ("ghanet", "abmil")
    weights: str = "random"
    #: patches of the training slides used by `calibrate-encoder` (only with random weights)
    calibration_patches: int = 128
    device: str = "auto"
    num_workers: int | None = None
    heatmaps: bool = True
    #: redo every stage; otherwise finished outputs are reused and `train` continues the run (--resume)
    overwrite: bool = False
    #: extra `ghanet train` options: the cohort is tiny (~32 training cases per fold), so the demo steps the
    #: optimiser every 4 cases (default 32 = once per epoch here) with a higher learning rate, and uses
    #: model width 128 instead of 512 to fit the 10-minute budget on 2 CPU cores
    train_args: tuple[str, ...] = ("--accum", "4", "--lr", "5e-4", "--dim", "128")
