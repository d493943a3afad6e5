"""CrackNet-Lite: the reference crack-segmentation network, shaped for INT8 edge CPUs.

Why this shape:
- Cracks are 1-10 px wide, so the output is produced at full input resolution and the
  decoder receives a full-resolution skip connection.
- Every op quantizes well with onnxruntime QDQ and TFLite full-integer: Conv + BatchNorm
  (folded at export), ReLU, bilinear resize + conv for upsampling (no transposed conv,
  which was 35-50 % slower at int8 here), channel concatenation.
- Channel counts are multiples of 16 (odd counts made int8 slower on this CPU) and the
  deeper stages use depthwise-separable convolutions, which keeps the network at about
  1.1 GMAC for a 320x480 frame (budget: 1.5 GMAC).
- The last feature block is linear (Conv+BN without ReLU) before the 1x1 head, so the
  logit map varies smoothly everywhere; a ReLU there left ~5 % of pixels at exactly the
  head bias in an earlier trial, which made low thresholds unstable.
- The input size must be a multiple of ``OUTPUT_STRIDE`` (16); the runtime pads frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_STRIDE = 16


class ConvBNReLU(nn.Sequential):
    """3x3 (or kxk) convolution, batch norm, optional ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SeparableBlock(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1, each with BN; ReLU after the pointwise unless linear."""

    def __init__(self, cin: int, cout: int, stride: int = 1, act: bool = True):
        super().__init__(
            ConvBNReLU(cin, cin, 3, stride=stride, groups=cin, act=True),
            ConvBNReLU(cin, cout, 1, act=act),
        )


class UpBlock(nn.Module):
    """Bilinear x2 upsample of the deeper map, concat with the skip, 1x1 fuse, separable refine."""

    def __init__(self, cdeep: int, cskip: int, cout: int, last_linear: bool = False):
        super().__init__()
        self.fuse = ConvBNReLU(cdeep + cskip, cout, 1)
        self.refine = SeparableBlock(cout, cout, act=not last_linear)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        deep = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(self.fuse(torch.cat([deep, skip], dim=1)))


@dataclass
class CrackNetConfig:
    """Architecture hyper-parameters; stored in every checkpoint so it can be rebuilt."""

    in_channels: int = 3
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 128])

    def to_dict(self) -> dict:
        return asdict(self)


class CrackNetLite(nn.Module):
    """U-Net-style encoder/decoder returning one channel of crack logits at input size."""

    def __init__(self, config: CrackNetConfig | None = None):
        super().__init__()
        self.config = config or CrackNetConfig()
        w0, w1, w2, w3, w4 = self.config.widths
        cin = self.config.in_channels
        self.stem = ConvBNReLU(cin, w0)  # 1/1
        self.enc1 = nn.Sequential(ConvBNReLU(w0, w1, stride=2), SeparableBlock(w1, w1))  # 1/2
        self.enc2 = nn.Sequential(ConvBNReLU(w1, w2, stride=2), SeparableBlock(w2, w2))  # 1/4
        self.enc3 = nn.Sequential(ConvBNReLU(w2, w3, stride=2), SeparableBlock(w3, w3))  # 1/8
        self.enc4 = nn.Sequential(SeparableBlock(w3, w4, stride=2), SeparableBlock(w4, w4))  # 1/16
        self.dec3 = UpBlock(w4, w3, w2)
        self.dec2 = UpBlock(w2, w2, w1)
        self.dec1 = UpBlock(w1, w1, w0)
        self.dec0 = UpBlock(w0, w0, w0, last_linear=True)
        self.head = nn.Conv2d(w0, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        s1 = self.enc1(s0)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        s4 = self.enc4(s3)
        d = self.dec3(s4, s3)
        d = self.dec2(d, s2)
        d = self.dec1(d, s1)
        d = self.dec0(d, s0)
        return self.head(d)


def build_reference_model(config: dict | None = None) -> CrackNetLite:
    """Factory used by checkpoints (``reference_model.network:build_reference_model``)."""
    cfg = CrackNetConfig(**(config or {})) if not isinstance(config, CrackNetConfig) else config
    return CrackNetLite(cfg)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, height: int = 320, width: int = 480) -> int:
    """Multiply-accumulates of conv and linear layers for one 1x3xHxW forward pass.

    Counted with forward hooks so pruned models (changed channel counts) are measured as
    they are, without a third-party profiler on the device side.
    """
    macs = 0

    def conv_hook(module: nn.Conv2d, _inp, out):
        nonlocal macs
        kh, kw = module.kernel_size
        macs += out.numel() // out.shape[0] * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inp, out):
        nonlocal macs
        macs += out.numel() // out.shape[0] * module.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs
