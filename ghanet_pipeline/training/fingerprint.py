"""The provenance fingerprint of a training run: bags, case mapping, genomics folds and options.

Components (see :mod:`ghanet_pipeline.core.fingerprints`):

- ``features`` — one item per bag used (bag stem -> content hash, :func:`~ghanet_pipeline.features.fingerprints.bag_content_sha`);
- ``encoder``  — how the bags were made (``bags.COMPAT_KEYS`` of the bags, checked equal for all);
- ``cases``    — one item per case: the bag stems it maps to (manifest, ``--case-id-from`` or cases.csv);
- ``genomics`` — per fold: the split, bins, labels, selected genes, scaler and gene targets;
- ``options``  — the protocol options (``config.protocol_options``: ``PROTOCOL_KEYS`` and a non-fp32
  precision; device, folds, cache size may change).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.fingerprints import DIGEST_CHARS, Fingerprint, component_from_items, component_from_mapping, digest_of, fingerprint
from ..features.fingerprints import bag_content_sha
from .config import TrainConfig, protocol_options


def fold_items(fd: Any) -> dict[str, str]:
    """Digests of one genomics fold (``genomics.FoldData``): split, bins, labels, genes, scaler, targets."""
    k = fd.fold
    lab = fd.labels
    labels = {str(c): [float(r.survival_months), int(r.censorship), int(r.bin), str(r.split)]
              for c, r in zip(lab.index, lab.itertuples(index=False), strict=True)}
    h = hashlib.sha256()
    for case in sorted(fd.targets):
        h.update(f"{case};".encode())
        for vec in fd.targets[case]:
            a = np.ascontiguousarray(np.asarray(vec, dtype="<f4"))
            h.update(f"{a.shape};".encode())
            h.update(memoryview(a).cast("B"))
    return {f"fold_{k}/split": digest_of({"train": list(fd.train_ids), "val": list(fd.val_ids)}),
            f"fold_{k}/bins": digest_of([float(e) for e in fd.bin_edges_months]),
            f"fold_{k}/labels": digest_of(labels),
            f"fold_{k}/genes": digest_of({f: list(fd.selected.get(f, [])) for f in fd.families}),
            f"fold_{k}/scaler": digest_of(fd.scaler),
            f"fold_{k}/targets": h.hexdigest()[:DIGEST_CHARS]}


def training_fingerprint(config: TrainConfig, folds: Mapping[int, Any], case_paths: Mapping[str, Sequence[Path]],
                         encoder: Mapping[str, Any], mapping: str, known_sha: Mapping[str, str] | None = None
                         ) -> Fingerprint:
    """Fingerprint of a run's inputs. ``folds``: EVERY fold of the genomics folder (so that jobs training
    different folds of one run agree); ``case_paths``: case -> its bag files; ``encoder``: the bags'
    encoder fields; ``mapping``: how cases were mapped to slides (for the summary); ``known_sha``: bag path
    -> content hash already read (``CaseBags.recorded_sha``; other bags go through ``bag_content_sha``)."""
    known = known_sha or {}
    bags = sorted({p for paths in case_paths.values() for p in paths})
    feat_items = {p.stem: known.get(str(p)) or bag_content_sha(p) for p in bags}
    gen_items: dict[str, str] = {}
    for k in sorted(folds):
        gen_items.update(fold_items(folds[k]))
    any_fold = folds[min(folds)] if folds else None
    n_genes = sum(len(v) for v in any_fold.selected.values()) if any_fold is not None else 0
    return fingerprint(
        features=component_from_items(feat_items, f"{len(bags)} bags"),
        encoder=component_from_mapping(dict(encoder)),
        cases=component_from_items({c: ";".join(p.stem for p in sorted(ps)) for c, ps in case_paths.items()},
                                   f"{len(case_paths)} cases mapped to bags ({mapping})"),
        genomics=component_from_items(gen_items, f"{len(folds)} folds, {n_genes} selected features in fold "
                                                 f"{min(folds) if folds else '-'}"),
        options=component_from_mapping(protocol_options(config)),
    )
