"""Inference engines for frozen patch encoders (PyTorch, OpenVINO fp32 / int8): which one runs
(:mod:`.choice`), the converted-model cache (:mod:`.cache`), the OpenVINO model (:mod:`.openvino_runner`),
int8 quantization per cohort (:mod:`.int8`), feature agreement figures (:mod:`.agreement`), and what the
bags record about it (below). Reading, decoding and writing are the extraction's own; an engine only
replaces the network call ``features = runner(uint8 batch)``.

Bag attrs written by extraction: ``engine`` (``torch`` | ``openvino``), ``precision`` (``fp32``, ``bf16``,
``fp16`` or ``int8``) and, for int8 only, ``engine_model`` (the int8 model's cache key, which hashes the
weights, input size, recipe and calibration sample) and ``engine_model_sha256`` (its files' hash).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...core.errors import MismatchError

#: bag attrs / checkpoint ``encoder`` keys of an int8 encoder
INT8_KEYS = ("precision", "engine_model", "engine_model_sha256")


def precision_class(attrs: Mapping[str, Any]) -> str:
    """``int8:<model key>`` for int8 bags, ``float`` for fp32 / bf16 / fp16 bags (interchangeable: they
    agree to per-patch cosine >= 0.9999) and for bags without a record (CLAM / TRIDENT)."""
    if str(attrs.get("precision", "")) == "int8":
        return f"int8:{attrs.get('engine_model', '?')}"
    return "float"


def int8_record(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint's ``encoder`` record adds for int8 bags (empty for float bags, so records of
    float runs stay as they were)."""
    if precision_class(attrs) == "float":
        return {}
    return {k: attrs[k] for k in INT8_KEYS if k in attrs}


def check_precision_mix(attrs_list: Sequence[Mapping[str, Any]], allow: bool = False) -> None:
    """Raise :class:`MismatchError` when int8 bags are mixed with float bags or with int8 bags of another
    quantized model (``allow``: accept it, e.g. to study the effect). Each item may carry ``path``."""
    classes: dict[str, str] = {}
    for i, attrs in enumerate(attrs_list):
        classes.setdefault(precision_class(attrs), str(attrs.get("path") or attrs.get("slide_id") or f"bag #{i}"))
    if len(classes) <= 1 or allow:
        return
    seen = "; ".join(f"{c.replace('int8:', 'int8 model ')} (e.g. {p})" for c, p in classes.items())
    raise MismatchError(
        f"the bags were made in different precisions: {seen}. int8 features differ from fp32 ones by more "
        f"than round-off, and a model must see one kind. Re-extract all slides with one --precision (int8 bags "
        f"go to <out>/features/<encoder_tag>_int8/), or pass --allow-mixed-precision to train on them anyway")
