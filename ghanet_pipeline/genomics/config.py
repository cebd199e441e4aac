"""Options of ``preprocess-genomics`` (:class:`GenomicsConfig`), light to import (the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import ConfigError
from ..protocols.presets import GENOMICS_FIELDS, apply_protocol

#: differential-expression methods: auto (DESeq2 on raw counts, else the t-test), deseq2, ttest, none
DE_METHODS = ("auto", "deseq2", "ttest", "none")


@dataclass
class GenomicsConfig:
    """Options of ``preprocess-genomics`` (defaults = CLI defaults).

    ``table``: MCAT-style table, or a raw counts matrix when ``clinical`` is given. ``splits``: folder
    of MCAT ``splits_<k>.csv`` (else ``folds`` stratified folds are made with ``seed``). ``padj`` /
    ``lfc``: DESeq2 thresholds (padj < padj, |log2FC| >= lfc); ``pvalue``: t-test threshold (p < pvalue).
    ``impute``: ``none`` (missing values are an error) or ``train-mean``. ``protocol`` / ``preset``
    (``protocols/presets.py``) fill ``de_method``, ``bins_from``, ``lfc`` and ``ttest_groups`` left at None;
    ``option_sources`` records where each came from. ``seed`` also seeds the official loader draw.
    """

    table: str
    families: str
    clinical: str | None = None
    splits: str | None = None
    folds: int = 5
    de_method: str | None = None
    bins_from: str | None = None
    seed: int = 0
    padj: float = 0.05
    lfc: float | None = None
    pvalue: float = 0.05
    impute: str = "none"
    n_bins: int = 4
    n_cpus: int = 1
    protocol: str = "ghanet"
    preset: str | None = None
    ttest_groups: str | None = None
    option_sources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        apply_protocol(self, GENOMICS_FIELDS)

    def validate(self) -> None:
        if self.de_method not in DE_METHODS:
            raise ConfigError(f"--de-method {self.de_method!r}: choose one of {', '.join(DE_METHODS)}")
        if self.bins_from not in ("train", "cohort"):
            raise ConfigError(f"--bins-from {self.bins_from!r}: choose train or cohort")
        if self.ttest_groups not in ("cases", "loader"):
            raise ConfigError(f"ttest_groups {self.ttest_groups!r}: choose cases or loader")
        if self.impute not in ("none", "train-mean"):
            raise ConfigError(f"--impute {self.impute!r}: choose none or train-mean")
        if not 0 < self.padj <= 1 or not 0 < self.pvalue <= 1:
            raise ConfigError("--padj and --pvalue must be in (0, 1]")
        if self.lfc < 0:
            raise ConfigError("--lfc must be >= 0 (absolute log2 fold change)")
        if self.n_bins != 4:
            raise ConfigError("only 4 survival bins are supported (risk groups use bins 0-1 vs 2-3)")
