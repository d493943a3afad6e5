"""Deploy-time re-parameterisation: the same function, in a form INT8 engines run faster.

Each rewrite is exact in real arithmetic and is checked numerically against the original
module (``deploy_network`` returns the original when a check fails or the network is not
the reference architecture). Measured reasons, onnxruntime 1.32 INT8 at 720x1280 on this
project's x86 machine (docs/converter.md has the figures):

- batch norms folded into their convolutions here (the exporters would fold them too), so
  the algebra below works on plain convolutions;
- ``UpBlock``: ``fuse(concat(up(deep), skip))`` with a 1x1 ``fuse`` equals
  ``up(fuse_deep(deep)) + fuse_skip(skip)``: the deep half of the 1x1 convolution runs at a
  quarter of the pixels, before the bilinear upsample (which then moves fewer channels on the
  lower levels), and the channel Concat disappears (in NHWC it copies a few bytes per pixel;
  onnxruntime's QLinearConcat took 6-11 % of the 720p frame in per-node profiles);
- the last decoder block ends linear (1x1 conv without ReLU) and the head is another 1x1
  conv: the two compose into one 1x1 conv (one full-resolution layer less).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def fold_bn(conv: Any, bn: Any) -> nn.Conv2d:
    """A convolution equal to ``bn(conv(x))`` in eval mode."""
    fused = copy.deepcopy(conv)
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.weight = nn.Parameter(conv.weight.detach() * scale.view(-1, 1, 1, 1))
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach())
    return fused


def _fold_all_bn(module: nn.Module) -> None:
    """Replace every ``Conv2d, BatchNorm2d`` pair inside an ``nn.Sequential`` (in place)."""
    for child in module.children():
        _fold_all_bn(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                module[i] = fold_bn(module[i], module[i + 1])
                module[i + 1] = nn.Identity()


class SplitUpBlock(nn.Module):
    """``UpBlock`` without the concat: ``act(up(deep_conv(deep)) + skip_conv(skip))`` then refine."""

    def __init__(self, fuse: nn.Sequential, cdeep: int, refine: nn.Module):
        super().__init__()
        conv: Any = fuse[0]
        self.deep = nn.Conv2d(cdeep, conv.out_channels, 1, bias=True)
        self.skip = nn.Conv2d(conv.in_channels - cdeep, conv.out_channels, 1, bias=False)
        with torch.no_grad():
            self.deep.weight.copy_(conv.weight[:, :cdeep])
            self.deep.bias.copy_(conv.bias)  # type: ignore[union-attr]
            self.skip.weight.copy_(conv.weight[:, cdeep:])
        self.act = nn.ReLU() if any(isinstance(m, nn.ReLU) for m in fuse) else nn.Identity()
        self.refine = refine

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        d = F.interpolate(self.deep(deep), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(self.act(d + self.skip(skip)))


def _compose_1x1(first: Any, second: Any) -> nn.Conv2d:
    """One 1x1 convolution equal to ``second(first(x))`` (both 1x1, no groups)."""
    w1 = first.weight.detach()[:, :, 0, 0]
    w2 = second.weight.detach()[:, :, 0, 0]
    b1 = first.bias.detach() if first.bias is not None else torch.zeros(w1.shape[0])
    b2 = second.bias.detach() if second.bias is not None else torch.zeros(w2.shape[0])
    out = nn.Conv2d(first.in_channels, second.out_channels, 1, bias=True)
    with torch.no_grad():
        out.weight.copy_((w2 @ w1)[:, :, None, None])
        out.bias.copy_(w2 @ b1 + b2)  # type: ignore[union-attr]
    return out


def _is_plain_1x1(conv) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1 \
        and conv.stride == (1, 1) and conv.padding in ((0, 0), 0)


def _rewrite_reference(model: Any) -> nn.Module:
    from reference_model.network import UpBlock

    _fold_all_bn(model)
    for name in ("dec3", "dec2", "dec1", "dec0"):
        block = getattr(model, name, None)
        if not isinstance(block, UpBlock):
            continue
        fuse: Any = block.fuse
        if not (isinstance(fuse, nn.Sequential) and _is_plain_1x1(fuse[0])):
            continue
        # deep channels = fuse inputs - skip channels; the skip is the encoder stage of the same level
        cskip = _skip_channels(model, name)
        if cskip is None:
            continue
        first: Any = fuse[0]
        setattr(model, name, SplitUpBlock(fuse, int(first.in_channels) - cskip, block.refine))
    last = getattr(model, "dec0", None)
    head = getattr(model, "head", None)
    refine = getattr(last, "refine", None)
    if isinstance(refine, nn.Sequential) and _is_plain_1x1(head) and len(refine) >= 2:
        tail = refine[-1]
        if isinstance(tail, nn.Sequential):
            layers = [m for m in tail if not isinstance(m, nn.Identity)]
            if len(layers) == 1 and _is_plain_1x1(layers[0]):  # linear 1x1: nothing between it and the head
                model.head = _compose_1x1(layers[0], head)
                refine[-1] = nn.Identity()
    return model


def _skip_channels(model: Any, name: str) -> int | None:
    stage = {"dec3": "enc3", "dec2": "enc2", "dec1": "enc1", "dec0": "stem"}[name]
    convs = [m for m in getattr(model, stage).modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels) if convs else None


def deploy_network(module: nn.Module, sample_size: tuple[int, int] = (64, 96)) -> nn.Module:
    """The re-parameterised copy of a reference network, or ``module`` itself.

    Checked on random input: any deviation above float rounding keeps the original.
    """
    from reference_model.network import CrackNetLite

    if not isinstance(module, CrackNetLite):
        return module
    module = module.eval()
    try:
        deployed = _rewrite_reference(copy.deepcopy(module)).eval()
    except Exception:  # an unusual variant of the architecture: run it as it is
        return module
    x = torch.randn(2, module.config.in_channels, *sample_size)
    with torch.no_grad():
        ref, out = module(x), deployed(x)
    if out.shape != ref.shape or float((out - ref).abs().max()) > 1e-3 * max(1.0, float(ref.abs().max())):
        return module
    return deployed
