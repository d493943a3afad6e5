"""A network wrapped so that its graph takes camera frames exactly as OpenCV delivers them.

Why: the vehicle gets uint8 BGR frames (HxWx3). With a plain float NCHW graph, the device
casts, reorders colours, normalises and transposes every pixel in numpy before inference,
then applies a float sigmoid to every output pixel. Folded into the graph these steps run
inside the inference engine (fused, threaded, and in INT8 mostly integer), and the device
only hands the frame over:

    frame [1,H,W,3] (uint8 for ONNX, float32 0..255 for TFLite) -> cast -> (x - mean) / std
    per channel (BGR order) -> NCHW -> [BGR->RGB folded into the first convolution] ->
    network -> sigmoid -> probabilities [1,H,W,1]

When the network starts with a convolution, colour swap and normalisation are folded into
it (input channels reordered and divided by std, bias corrected, zero padding replaced by
padding with the mean pixel): an INT8 engine then feeds the frame's integers straight into
its first integer convolution. Otherwise they stay explicit ops (per-channel on NCHW).
The wrapped graph is checked against ``normalise -> network -> sigmoid`` on a random frame.
"""

from __future__ import annotations

import copy
from typing import Any

from converters.errors import ConvertError
from edge_agent.contract import InferenceContract

INPUT_DTYPES = ("uint8", "float32")


def frame_contract(contract: InferenceContract, input_size: tuple[int, int]) -> InferenceContract:
    """The contract of a frame-input artifact: NHWC pixels in, probabilities out.

    ``color_order``, ``mean`` and ``std`` keep describing what the graph does inside.
    """
    return contract.model_copy(update={"input_size": tuple(input_size), "layout": "NHWC", "input_dtype": "uint8",
                                       "output": "probabilities"})


def _first_conv(model, size: tuple[int, int]):
    """The convolution the network's input goes straight into, or None."""
    import torch
    from torch import nn

    x = torch.randn(1, 3, *size)
    first: list[Any] = []

    def hook(module, args):
        if not first:
            first.append((module, args[0] is x))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not first or not first[0][1]:
        return None
    conv = first[0][0]
    ok = (conv.in_channels == 3 and conv.groups == 1 and conv.padding_mode == "zeros"
          and not isinstance(conv.padding, str) and conv.padding[0] == conv.padding[1])
    return conv if ok else None


def _fold_normalisation(conv, mean_bgr: list[float], std_bgr: list[float], swap: bool) -> int:
    """Make ``conv`` take BGR pixels 0..255 instead of normalised input; returns its old padding.

    ``conv(pad0((x - mean) / std))`` equals ``conv'(pad_mean(x))`` with the input channels
    reordered and divided by std, the bias corrected by the weighted mean, and the zero
    padding replaced by padding with the mean pixel (which normalises to exactly 0).
    """
    import torch
    from torch import nn

    with torch.no_grad():
        w = conv.weight.detach()
        if swap:
            w = w[:, [2, 1, 0]]
        w = w / torch.tensor(std_bgr, dtype=w.dtype).view(1, 3, 1, 1)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
        bias = bias - (w * torch.tensor(mean_bgr, dtype=w.dtype).view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
        conv.weight = nn.Parameter(w.contiguous())
        conv.bias = nn.Parameter(bias)
    pad = int(conv.padding[0])
    conv.padding = (0, 0)
    return pad


def frame_input_model(module, contract: InferenceContract, input_size: tuple[int, int], input_dtype: str = "uint8",
                      deploy: bool = True, fold: bool = True):
    """``module`` (NCHW normalised input, logits out) wrapped to take frames; see the module docstring.

    ``input_dtype`` is the graph input's dtype: ``uint8`` (ONNX) or ``float32`` (TFLite, whose
    full-integer quantizer then makes it int8 with scale 1 and zero point -128). ``deploy``
    applies ``converters.deploy.deploy_network``; ``fold`` moves the normalisation into the
    first convolution when the network starts with one (checked numerically).
    """
    import torch
    from torch import nn

    from converters.deploy import deploy_network

    if input_dtype not in INPUT_DTYPES:
        raise ConvertError(f"frame input dtype '{input_dtype}' must be one of {', '.join(INPUT_DTYPES)}")
    if contract.output != "logits":
        raise ConvertError(f"the source model's contract says output '{contract.output}'; wrapping expects logits")
    module = module.eval()
    swap = contract.color_order == "RGB"
    # frame channel c is model channel 2-c for an RGB model
    mean = list(contract.mean)[::-1] if swap else list(contract.mean)
    std = list(contract.std)[::-1] if swap else list(contract.std)
    network = deploy_network(module) if deploy else module
    pad = None
    if fold:
        candidate = copy.deepcopy(network).eval()
        conv = _first_conv(candidate, (max(64, contract.stride * 4),) * 2)
        if conv is not None:
            pad = _fold_normalisation(conv, mean, std, swap)
            network = candidate
    h, w = int(input_size[0]), int(input_size[1])

    class FrameInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("inv_std", (1.0 / torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1))
            self.swap = swap and pad is None
            self.pad = pad
            if pad:
                px = torch.tensor(mean, dtype=torch.float32).view(1, 1, 1, 3)
                self.register_buffer("pad_cols", px.expand(1, h, pad, 3).contiguous())
                self.register_buffer("pad_rows", px.expand(1, pad, w + 2 * pad, 3).contiguous())
            self.out_shape = (1, h, w, 1)

        def forward(self, frame):
            x = frame.float()
            if self.pad is not None:  # normalisation inside the first convolution
                if self.pad:
                    cols: Any = self.pad_cols
                    rows: Any = self.pad_rows
                    x = torch.cat([cols, x, cols], dim=2)
                    x = torch.cat([rows, x, rows], dim=1)
                x = x.permute(0, 3, 1, 2)
            else:
                x = (x.permute(0, 3, 1, 2) - self.mean) * self.inv_std
                if self.swap:
                    x = x[:, [2, 1, 0]]
            prob = torch.sigmoid(self.network(x))
            return prob.reshape(self.out_shape)  # one channel: NCHW and NHWC have the same memory order

    wrapped = FrameInput().eval()
    _check_against(wrapped, module, contract, input_dtype, (h, w))
    return wrapped


def _check_against(wrapped, module, contract: InferenceContract, input_dtype: str, size: tuple[int, int]) -> None:
    """The wrapped graph must equal normalise -> module -> sigmoid on a random frame."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, *size, 3)).astype(np.uint8)
    order = [2, 1, 0] if contract.color_order == "RGB" else [0, 1, 2]
    x = (frame[..., order].astype(np.float32) - np.asarray(contract.mean, np.float32)) / np.asarray(contract.std,
                                                                                                    np.float32)
    with torch.no_grad():
        ref = torch.sigmoid(module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))).numpy().reshape(-1)
        feed = torch.from_numpy(frame) if input_dtype == "uint8" else torch.from_numpy(frame.astype(np.float32))
        out = wrapped(feed).numpy().reshape(-1)
    err = float(np.abs(out - ref).max())
    if err > 1e-3:
        raise ConvertError(f"the frame-input graph differs from the source model by {err:.2e} on a random frame "
                           "(a conversion bug); export with --input-dtype float32 to keep the plain graph")


def sample_frame(input_size: tuple[int, int], input_dtype: str = "uint8"):
    """A zero frame of the graph's input type, for tracing."""
    import torch

    dtype = torch.uint8 if input_dtype == "uint8" else torch.float32
    return torch.zeros(1, int(input_size[0]), int(input_size[1]), 3, dtype=dtype)


def export_graph(module, contract: InferenceContract, input_size: tuple[int, int], out_path: Any,
                 input_dtype: str) -> tuple[Any, Any, InferenceContract]:
    """What every exporter does first for a frame-input graph: check the size, make the output
    folder, put the model in eval mode, wrap it to take frames; (graph, sample frame, contract)."""
    from pathlib import Path

    from converters.export_onnx import check_input_size

    check_input_size(input_size, contract.stride)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    return (frame_input_model(module, contract, input_size, input_dtype), sample_frame(input_size, input_dtype),
            frame_contract(contract, input_size))
