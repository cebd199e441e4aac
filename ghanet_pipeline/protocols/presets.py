"""The two training protocols (``ghanet``, ``official``) and the paper's per-cohort presets, as data.

One place shows every protocol difference; ``preprocess-genomics`` and ``train`` read their defaults from
here (``--protocol``, ``--preset``). Precedence for each option: an explicit value (CLI flag / config
field) > the preset > the protocol > the built-in default. docs/fidelity.md maps each field to the
authors' released code and to the tests that pin it.

- ``ghanet`` (default): our protocol; every departure from the released code is deliberate and honest
  (ceil top-k, per-fold bins, each training case once in the t-test, no lost gradient, final epoch).
- ``official``: reproduces the authors' released training code where it differs from ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..core.errors import ConfigError

#: built-in defaults of options a protocol or preset may set (used when neither sets them)
BUILTIN = {"topk": 0.2, "lr": 2e-4, "de_method": "auto", "lfc": 1.0}


@dataclass(frozen=True)
class Protocol:
    """Defaults that define a protocol (see docs/fidelity.md for each row).

    ``topk_rule``: ``ceil`` = ceil(topk * N), >= 1, exactly k patches; ``floor`` = int(N * topk) keeping
    ties (the released code). ``bins_from``: survival-bin quartiles fitted on each ``train`` fold or the
    whole ``cohort``. ``ttest_groups``: ``cases`` = each training case once; ``loader`` = the cases drawn
    by one pass of the class-balanced, with-replacement training loader (duplicates, missing cases).
    ``de_method`` / ``lfc``: differential selection method and DESeq2 |log2FC| floor. ``accumulation``:
    ``epoch`` = gradients zeroed at each epoch start, a partial optimiser step at epoch end;
    ``carry-over`` = no zeroing at epoch start, the leftover partial sum joins the next epoch's first
    step (and the last epoch's leftover is never applied). ``select``: reported epoch.
    """

    name: str
    topk_rule: str
    bins_from: str
    ttest_groups: str
    de_method: str
    lfc: float
    accumulation: str
    select: str
    summary: str


PROTOCOLS: dict[str, Protocol] = {
    "ghanet": Protocol(
        name="ghanet", topk_rule="ceil", bins_from="train", ttest_groups="cases", de_method="auto", lfc=1.0,
        accumulation="epoch", select="final",
        summary="ours: no validation information in bins or epoch choice, every case once in the t-test"),
    "official": Protocol(
        name="official", topk_rule="floor", bins_from="cohort", ttest_groups="loader", de_method="ttest",
        lfc=0.0, accumulation="carry-over", select="best-epoch",
        summary="the authors' released code (optimistic: bins on all cases, epoch chosen on validation)"),
}

#: option -> the stage that uses it
GENOMICS_FIELDS = ("bins_from", "ttest_groups", "de_method", "lfc")
TRAIN_FIELDS = ("topk_rule", "accumulation", "select")


@dataclass(frozen=True)
class Preset:
    """The paper's per-cohort settings: ``topk`` (fraction), ``lr``, ``de_method`` (None = protocol's)."""

    name: str
    topk: float
    lr: float
    de_method: str | None = None


#: Source: the G-HANet paper's implementation details (Wang et al., 2024, arXiv:2403.10040); the released
#: code's defaults agree for BLCA (ratio 0.2, lr 2e-4).
PRESETS: dict[str, Preset] = {
    "tcga_blca": Preset("tcga_blca", topk=0.20, lr=2e-4),
    "tcga_brca": Preset("tcga_brca", topk=0.15, lr=2e-4),
    "tcga_gbmlgg": Preset("tcga_gbmlgg", topk=0.15, lr=2e-4),
    "tcga_luad": Preset("tcga_luad", topk=0.20, lr=2e-4),
    "tcga_ucec": Preset("tcga_ucec", topk=0.30, lr=1e-4, de_method="none"),
}
GENOMICS_PRESET_FIELDS = ("de_method",)
TRAIN_PRESET_FIELDS = ("topk", "lr")


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"--protocol {name!r}: choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def get_preset(name: str | None) -> Preset | None:
    if name is None:
        return None
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve(protocol: str, preset: str | None, fields: tuple[str, ...], explicit: Mapping[str, Any]
            ) -> tuple[dict[str, Any], dict[str, str]]:
    """Effective values of ``fields`` and where each came from (explicit | preset | protocol | default).

    ``explicit`` maps a field to the value given by the user, or None when not given.
    """
    proto = asdict(get_protocol(protocol))
    pre = get_preset(preset)
    pre_d = {k: v for k, v in asdict(pre).items() if v is not None and k != "name"} if pre else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in fields:
        if explicit.get(f) is not None:
            values[f], sources[f] = explicit[f], "explicit"
        elif f in pre_d:
            values[f], sources[f] = pre_d[f], f"preset {preset}"
        elif f in proto:
            values[f], sources[f] = proto[f], f"protocol {protocol}"
        else:
            values[f], sources[f] = BUILTIN[f], "default"
    return values, sources


def apply_protocol(config: Any, fields: tuple[str, ...]) -> None:
    """Fill the ``fields`` of an options dataclass (``TrainConfig``, ``GenomicsConfig``) that were left at
    None from its ``protocol`` and ``preset`` (explicit values win), and record where each value came from
    in its ``option_sources`` (an "explicit" source recorded earlier, e.g. by a config file, is kept)."""
    values, sources = resolve(config.protocol, config.preset, fields, {f: getattr(config, f) for f in fields})
    for f, v in values.items():
        setattr(config, f, v)
    config.option_sources = {**sources, **{k: v for k, v in config.option_sources.items()
                                           if k in sources and sources[k] == "explicit"}}
