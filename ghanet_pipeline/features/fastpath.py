"""The encoder as it runs in ``extract-features``: the same function as ``model(preprocess(x))``, computed
with fewer passes over memory.

* **Normalisation folded into the first convolution, exactly.** ``(u / 255 - mean) / std`` is a
  per-channel affine map ``a * u + b``; the first convolution of ``a * u + b`` equals a convolution of
  ``u`` with weights scaled by ``a`` plus a per-output constant ``sum(W * b)``, *provided* the zero
  padding of the normalised image is reproduced: zero after normalisation is ``255 * mean`` before it.
  So the raw pixels are copied (uint8 -> float, one pass) into a reused buffer whose border of
  ``padding`` px holds ``255 * mean`` per channel, and the folded convolution runs without padding. The
  constant is absorbed into the following batch norm's running mean.
* **Batch norms folded into the convolutions** (eval mode: ``bn(conv(x))`` is one convolution with
  scaled weights and a bias), which removes a full pass over every activation map.
* **One reused input buffer** (channels_last, the layout oneDNN / cuDNN want) instead of a fresh
  float tensor, a normalised copy and a layout copy per batch.

All of this changes the arithmetic only by float round-off (the tests compare against the plain
model). Encoders other than the registry's ResNet50 trunk fall back to ``model(preprocess(x))``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from .encoders import EncoderSpec


class Runner:
    """Callable ``runner(batch_u8) -> features`` for uint8 ``(B, H, W, 3)`` batches on ``device``.

    ``model`` (eval mode) and ``spec`` are the encoder; the original model is not modified.
    """

    def __init__(self, model: nn.Module, spec: EncoderSpec, device: torch.device) -> None:
        import torch

        self.device, self.spec = device, spec
        self._buf: torch.Tensor | None = None
        folded = fold_resnet_trunk(model, spec)
        if folded is None:
            self.model, self.pad, self.fill = model, 0, None
        else:
            self.model, self.pad, fill = folded
            self.fill = torch.tensor(fill, dtype=torch.float32, device=device)
        self.model = self.model.to(device, memory_format=torch.channels_last).eval()
        self.folded = folded is not None

    def _buffer(self, b: int, h: int, w: int) -> torch.Tensor:
        """Reused (b, 3, h + 2p, w + 2p) float32 channels_last buffer with the fill in its border."""
        import torch

        p = self.pad
        shape = (b, 3, h + 2 * p, w + 2 * p)
        if self._buf is None or self._buf.shape[0] < b or tuple(self._buf.shape[1:]) != shape[1:]:
            buf = torch.empty(shape, dtype=torch.float32, device=self.device, memory_format=torch.channels_last)
            buf.copy_(self.fill.view(1, 3, 1, 1).expand(shape))
            self._buf = buf
        return self._buf[:b]

    def __call__(self, batch_u8: torch.Tensor) -> torch.Tensor:
        from .encoders import preprocess

        if not self.folded:
            return self.model(preprocess(batch_u8, self.spec))
        b, h, w, _ = batch_u8.shape
        buf = self._buffer(b, h, w)
        p = self.pad
        # NHWC view of the interior; uint8 -> float32 and the copy are one pass
        buf.permute(0, 2, 3, 1)[:, p:p + h, p:p + w, :].copy_(batch_u8)
        return self.model(buf)


def fold_resnet_trunk(model: nn.Module, spec: EncoderSpec) -> tuple[nn.Module, int, list[float]] | None:
    """A copy of a torchvision-style ResNet trunk (``Sequential(conv1, bn1, relu, maxpool, layer1..)``)
    with normalisation and batch norms folded (see module doc), its input padding and border fill;
    None when ``model`` is not such a trunk."""
    import torch
    from torch import nn

    mods = list(model.children()) if isinstance(model, nn.Sequential) else []
    if len(mods) < 2 or not isinstance(mods[0], nn.Conv2d) or not isinstance(mods[1], nn.BatchNorm2d):
        return None
    conv: nn.Conv2d = mods[0]
    if conv.in_channels != 3 or conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    ph, pw = conv.padding
    if ph != pw:
        return None
    m = copy.deepcopy(model).eval()
    conv, bn = m[0], m[1]
    mean = torch.tensor(spec.mean, dtype=torch.float64)
    std = torch.tensor(spec.std, dtype=torch.float64)
    a = 1.0 / (255.0 * std)  # normalised = a * u + b
    b = -mean / std
    with torch.no_grad():
        w64 = conv.weight.double()
        const = (w64 * b.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))  # per output channel
        if conv.bias is not None:
            const = const + conv.bias.double()
        new = nn.Conv2d(3, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, bias=False)
        new.weight.copy_((w64 * a.view(1, 3, 1, 1)).to(conv.weight.dtype))
        bn.running_mean.copy_((bn.running_mean.double() - const).to(bn.running_mean.dtype))
    m[0] = new.eval()
    _fold_batchnorms(m)
    for prm in m.parameters():
        prm.requires_grad_(False)
    return m, int(ph), [float(v) for v in (255.0 * mean)]


def _fold_batchnorms(module: nn.Module) -> None:
    """Replace every (Conv2d, BatchNorm2d) pair that follows each other in a Sequential, and every
    torchvision Bottleneck's ``convK``/``bnK`` pairs, by the fused convolution (BN -> Identity)."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        _fold_batchnorms(child)
    if isinstance(module, nn.Sequential):
        items = list(module._modules.items())
        for (k1, c), (k2, bn) in zip(items, items[1:], strict=False):
            if isinstance(c, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[k1] = fuse_conv_bn_eval(c, bn)
                module._modules[k2] = nn.Identity()
    for k in range(1, 4):
        c, bn = getattr(module, f"conv{k}", None), getattr(module, f"bn{k}", None)
        if isinstance(c, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not isinstance(module, nn.Sequential):
            setattr(module, f"conv{k}", fuse_conv_bn_eval(c, bn))
            setattr(module, f"bn{k}", nn.Identity())
