"""Export a PyTorch model to one fp32 ONNX file at a fixed input shape, contract inside.

Why these settings:
- fixed input shape: the same network exported with dynamic H/W and then quantized ran
  *slower* in int8 than fp32 here (shape inference failed on Resize, Transposes appeared);
  the runtime tiles frames to the recorded ``input_size`` instead;
- ``dynamo=False``, opset 17, eval mode with constant folding: batch norms fold into the
  convolutions (checked: no BatchNormalization node may remain), one self-contained file
  (the dynamo exporter writes a ``.onnx.data`` sidecar by default);
- the inference contract is stored in ``metadata_props`` so a raw .onnx is usable alone;
- frame input (the default, ``converters.frame_model``): the graph takes a uint8 BGR frame
  ``[1,H,W,3]`` and returns probabilities ``[1,H,W,1]``; normalisation and sigmoid are inside.
  ``frame_input=False`` exports the bare network (float NCHW in, logits out), as before.
"""

from __future__ import annotations

import os
from pathlib import Path

from converters.errors import ConvertError
from edge_agent.contract import CONTRACT_METADATA_KEY, InferenceContract

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
FRAME_INPUT_NAME = "frame"
FRAME_OUTPUT_NAME = "probabilities"


def parse_size(text: str) -> tuple[int, int]:
    """'320x480' -> (320, 480)."""
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ConvertError(f"input size '{text}' must look like HEIGHTxWIDTH, e.g. 320x480") from None
    if h <= 0 or w <= 0:
        raise ConvertError(f"input size '{text}' must be positive")
    return h, w


def check_input_size(size: tuple[int, int], stride: int) -> None:
    if size[0] % stride or size[1] % stride:
        raise ConvertError(f"input size {size[0]}x{size[1]} must be a multiple of the model stride {stride} "
                           f"(e.g. {size[0] // stride * stride or stride}x{size[1] // stride * stride or stride})")


def set_onnx_contract(path: str | Path, contract: InferenceContract, out_path: str | Path | None = None) -> Path:
    """Write ``contract`` into the model's metadata_props (replacing an older one)."""
    import onnx

    path = Path(path)
    out_path = Path(out_path) if out_path else path
    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != CONTRACT_METADATA_KEY]
    del proto.metadata_props[:]
    for p in kept:
        proto.metadata_props.add(key=p.key, value=p.value)
    proto.metadata_props.add(key=CONTRACT_METADATA_KEY, value=contract.to_json())
    tmp = out_path.with_name(out_path.name + ".tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, out_path)
    return out_path


def get_onnx_contract(path: str | Path) -> InferenceContract | None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for p in proto.metadata_props:
        if p.key == CONTRACT_METADATA_KEY:
            return InferenceContract.from_json(p.value)
    return None


def op_types(path: str | Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def export_onnx(module, out_path: str | Path, contract: InferenceContract,
                input_size: tuple[int, int] = (320, 480), frame_input: bool = True) -> Path:
    """Export ``module`` (eval mode) at a fixed input size; returns the path.

    ``frame_input``: uint8 NHWC frames in, probabilities out (see the module docstring);
    otherwise 1x3xHxW normalised floats in, logits out. Raises ConvertError on BN left over.
    """
    import onnx
    import torch

    out_path = Path(out_path)
    if frame_input:
        from converters.frame_model import export_graph

        graph, sample, contract = export_graph(module, contract, input_size, out_path, "uint8")
        names = ([FRAME_INPUT_NAME], [FRAME_OUTPUT_NAME])
    else:
        check_input_size(input_size, contract.stride)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        module.eval()
        graph, sample, names = module, torch.zeros(1, 3, *input_size), ([INPUT_NAME], [OUTPUT_NAME])
        contract = contract.model_copy(update={"input_size": tuple(input_size), "layout": "NCHW",
                                               "input_dtype": "float32", "output": "logits"})
    tmp = out_path.with_name(out_path.name + ".tmp.onnx")
    try:
        with torch.no_grad():
            torch.onnx.export(graph, (sample,), str(tmp), input_names=names[0], output_names=names[1],
                              opset_version=OPSET, dynamo=False, do_constant_folding=True, export_params=True)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ConvertError(f"ONNX export failed ({str(exc).splitlines()[0][:200]})") from exc
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    bn = [n.name or n.op_type for n in proto.graph.node if n.op_type == "BatchNormalization"]
    if bn:
        tmp.unlink(missing_ok=True)
        raise ConvertError(f"ONNX export left {len(bn)} BatchNormalization node(s) unfolded ({', '.join(bn[:3])}); "
                           "the model was probably not in eval mode or uses BN in an unusual place")
    set_onnx_contract(tmp, contract, out_path)
    tmp.unlink(missing_ok=True)
    return out_path
