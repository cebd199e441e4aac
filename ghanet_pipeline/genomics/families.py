"""Gene families: read the families CSV and match its gene symbols to feature columns.

The CSV has one column per family (header = family name, column order = token order) and gene
symbols below; columns may have different lengths and families may share genes. A family's features
are the feature columns whose gene symbol is listed (any suffix: ``_rnaseq``, ``_cnv``, ``_mut``, or
plain gene rows of a counts matrix), sorted by name. Symbols are compared case-insensitively after
stripping spaces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..core.tables import read_table_file

log = logging.getLogger(__name__)


@dataclass
class Family:
    """One gene family: ``name``, listed gene symbols (file order, de-duplicated)."""

    name: str
    genes: list[str]


@dataclass
class FamilyMatch:
    """A family matched against the data: how many listed genes were found, and the feature names."""

    name: str
    listed_genes: int
    found_genes: int
    features: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "listed_genes": self.listed_genes, "found_genes": self.found_genes,
                "features": list(self.features)}


def read_families(path: Path | str) -> list[Family]:
    """Read the families CSV (one column per family, token order = column order)."""
    df = read_table_file(path)
    if df.shape[1] == 0:
        raise InputError(f"{path}: no family columns; the header must hold family names")
    names = list(df.columns)
    seen: set[str] = set()
    out = []
    for i, name in enumerate(names):
        if name == "" or name.startswith("Unnamed:"):
            raise InputError(f"{path}: column {i + 1} has no family name in the header; name it")
        if name in seen:
            raise InputError(f"{path}: family {name!r} appears twice in the header; rename one")
        seen.add(name)
        genes = [g.strip() for g in df[name].astype(str) if g.strip() not in ("", "nan", "NaN", "NA")]
        out.append(Family(name=name, genes=list(dict.fromkeys(genes))))
    return out


def match_families(families: list[Family], feature_gene: dict[str, str], path: Path | str = "families"
                   ) -> tuple[list[FamilyMatch], list[str]]:
    """Match each family's genes to features. Returns (matches in token order, warnings).

    A family without any matching feature is a warning (it keeps an empty feature list); no family
    matching anything is an :class:`InputError`.
    """
    by_gene: dict[str, list[str]] = {}
    for feat, gene in feature_gene.items():
        by_gene.setdefault(gene.strip().upper(), []).append(feat)
    matches: list[FamilyMatch] = []
    warnings: list[str] = []
    for fam in families:
        feats: list[str] = []
        found = 0
        for g in fam.genes:
            hit = by_gene.get(g.upper())
            if hit:
                found += 1
                feats.extend(hit)
        matches.append(FamilyMatch(fam.name, len(fam.genes), found, sorted(set(feats))))
        if not feats:
            warnings.append(f"family {fam.name!r}: none of its {len(fam.genes)} listed genes is in the data; "
                            f"it will have no features (check gene symbols, e.g. {fam.genes[:3]})")
    if not any(m.features for m in matches):
        example = sorted(set(feature_gene.values()))[:5]
        raise InputError(f"{path}: no gene of any family matches a feature of the data (data genes look "
                         f"like {example}); families must list gene symbols as used in the table's "
                         f"column names (<GENE>_rnaseq) or the counts' gene names")
    return matches, warnings
