"""Small real models for tests: the reference architecture at reduced width, exported for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_WIDTHS = [16, 16, 16, 16, 16]


def with_batchnorm_statistics(model, mean: float = 0.2, var: tuple[float, float] = (0.5, 1.5), bias: float = 0.1):
    """Non-trivial BatchNorm statistics (uniform in the given ranges), so that folding the
    batch norms at export is actually exercised; the model in eval mode."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-mean, mean)
                m.running_var.uniform_(*var)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-bias, bias)
    return model.eval()


def tiny_torch_model(seed: int = 0, widths=TINY_WIDTHS, **batchnorm):
    """The reference architecture at ``widths`` with random weights (``seed``) and batch-norm
    statistics (``with_batchnorm_statistics`` ranges)."""
    import torch

    from reference_model.network import build_reference_model

    torch.manual_seed(seed)
    return with_batchnorm_statistics(build_reference_model({"widths": list(widths)}), **batchnorm)


def export_onnx(model, path: Path, input_size: tuple[int, int] | None, threshold: float = 0.5) -> Path:
    """Plain torch.onnx export + the contract in metadata (what crackseg-convert does, minimally)."""
    import onnx
    import torch

    from edge_agent.contract import CONTRACT_METADATA_KEY, InferenceContract

    h, w = input_size or (64, 96)
    kwargs = {} if input_size else {"dynamic_axes": {"image": {2: "h", 3: "w"}, "logits": {2: "h", 3: "w"}}}
    torch.onnx.export(model, torch.zeros(1, 3, h, w), str(path), input_names=["image"], output_names=["logits"],
                      opset_version=17, dynamo=False, **kwargs)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key = CONTRACT_METADATA_KEY
    entry.value = InferenceContract(input_size=input_size, threshold=threshold).to_json()
    onnx.save(proto, str(path))
    return path


def torch_probabilities(model, frame_bgr: np.ndarray) -> np.ndarray:
    """The torch reference: same normalisation as the contract, full frame padded to stride 16."""
    import torch
    import torch.nn.functional as F

    from edge_agent.contract import IMAGENET_MEAN, IMAGENET_STD

    rgb = frame_bgr[..., ::-1].astype(np.float32)
    x = (rgb - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    h, w = t.shape[-2:]
    t = F.pad(t, (0, (-w) % 16, 0, (-h) % 16), mode="reflect")
    with torch.no_grad():
        return torch.sigmoid(model(t))[0, 0, :h, :w].numpy()
