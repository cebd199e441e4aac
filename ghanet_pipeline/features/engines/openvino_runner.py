"""The encoder as an OpenVINO model: conversion from the PyTorch module, the cached IR, and the callable
that replaces the PyTorch forward pass in extraction.

The converted model takes what the patch reader yields, uint8 ``(B, H, W, 3)`` RGB with any batch size
``B``, and returns the encoder's ``(B, dim)`` features: the layout change, the uint8 -> float cast and
the normalisation are part of the graph (OpenVINO folds the normalisation and the batch norms into the
convolutions itself). It is saved as OpenVINO IR (``model.xml`` + ``model.bin``, fp32 weights) in the
engine cache (:mod:`.cache`), keyed by encoder, input size, weights id and precision, and compiled for
the CPU with ``PERFORMANCE_HINT=LATENCY`` (one batch at a time on all compute threads; the THROUGHPUT
hint with one request at a time was measured at half the speed) and ``INFERENCE_PRECISION_HINT`` set
to what the bag records: ``f32`` for fp32 (no silent bf16 on CPUs that have it), ``bf16`` only when bf16
was chosen (the same fp32 IR, computed in bf16 by the plugin); an int8 model's float operations compute in
what its cache record says (``float_ops``: bf16 only where it was measured to pass the int8 gate that way,
see :func:`.int8.build`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...core.files import file_sha256
from .sigstack import kept_signal_stack

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ..encoders import LoadedEncoder

log = logging.getLogger(__name__)

MODEL_XML = "model.xml"
MODEL_BIN = "model.bin"


def torch_input_module(encoder: LoadedEncoder) -> nn.Module:
    """``encoder.model`` preceded by the reader-to-network step: uint8 NHWC -> normalised float NCHW."""
    import torch
    from torch import nn

    spec = encoder.spec

    class _FromPixels(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model
            std = torch.tensor(spec.std, dtype=torch.float64)
            mean = torch.tensor(spec.mean, dtype=torch.float64)
            self.register_buffer("scale", (1.0 / (255.0 * std)).float().view(1, 3, 1, 1))
            self.register_buffer("shift", (-mean / std).float().view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2).to(torch.float32)
            return self.model(x * self.scale + self.shift)

    return _FromPixels(encoder.model).eval()


def convert(encoder: LoadedEncoder, input_size: int) -> Any:
    """The encoder as an ``openvino.Model`` with a dynamic batch dimension (raises what the converter
    raises when the model does not convert)."""
    import openvino as ov
    import torch

    module = torch_input_module(encoder)
    example = torch.zeros((2, input_size, input_size, 3), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the converter traces with torch.jit (deprecated upstream)
        model = ov.convert_model(module, example_input=example,
                                 input=[(ov.PartialShape([-1, input_size, input_size, 3]), ov.Type.u8)])
    return model


def save_ir(model: Any, folder: Path) -> dict[str, Any]:
    """Write ``model`` as fp32 IR into ``folder``; returns the file facts for the cache record."""
    import openvino as ov

    xml = Path(folder) / MODEL_XML
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return {"files": [MODEL_XML, MODEL_BIN], "model_sha256": ir_sha256(folder), "openvino_version": ov.__version__}


def ir_sha256(folder: Path) -> str:
    """SHA-256 over the SHA-256s of ``model.xml`` and ``model.bin`` (the model's id)."""
    import hashlib

    both = "".join(file_sha256(Path(folder) / name) for name in (MODEL_XML, MODEL_BIN))
    return hashlib.sha256(both.encode()).hexdigest()


def compile_ir(folder: Path, threads: int | None, precision: str = "fp32") -> Any:
    """The cached IR compiled for the CPU (see module doc for the settings); ``precision`` ``bf16``: the
    operations that are not int8 compute in bf16 (CPUs with bf16 instructions only), else in fp32."""
    import openvino as ov

    core = ov.Core()
    hint = "bf16" if precision == "bf16" else "f32"
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    with kept_signal_stack():  # see .sigstack: the plugin would leave this thread a stack it later frees
        return core.compile_model(str(Path(folder) / MODEL_XML), "CPU", config)


class OpenVinoRunner:
    """Callable ``runner(batch_u8) -> features``: uint8 ``(B, H, W, 3)`` CPU tensor -> float32 ``(B, dim)``
    torch tensor, computed by a compiled OpenVINO model (one inference request, reused)."""

    engine = "openvino"
    folded = False

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def __call__(self, batch_u8: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        x = np.ascontiguousarray(batch_u8.numpy())
        result = self.request.infer({0: x}, share_inputs=True, share_outputs=False)
        return torch.from_numpy(np.asarray(result[0], dtype=np.float32))


def run_compiled(compiled: Any, patches: Any, batch_size: int = 32) -> Any:
    """Features ``(n, dim)`` float32 of uint8 ``patches`` ``(n, H, W, 3)`` through a compiled model."""
    import numpy as np

    request = compiled.create_infer_request()
    parts = [np.array(request.infer({0: np.ascontiguousarray(patches[i:i + batch_size])})[0], dtype=np.float32)
             for i in range(0, len(patches), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
