"""TFLite export: fp32 via litert-torch, full-integer INT8 via ai-edge-quantizer.

Why this path (measured here, see docs/converter.md): litert-torch converts PyTorch to an
fp32 .tflite in seconds without TensorFlow; ai-edge-quantizer's ``static_wi8_ai8`` recipe
then makes a full-integer model (int8 weights, activations, input and output) that ran
22.5 ms at 320x480 on ai-edge-litert. litert-torch's own PT2E int8 path failed
intermittently on a U-Net, and onnx2tf needs TensorFlow and downloads calibration data at
run time, so neither is used. Nothing here touches the network.

Layout: the model is wrapped so its input and output are channels-last (NHWC), TFLite's
native layout, which avoids transposes inside the graph; the contract records the layout
read back from the written file.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from converters.calibration import CalibrationReader, ImageFolderCalibrationReader, iter_batches
from converters.errors import ConvertError
from edge_agent.contract import InferenceContract
from edge_agent.detectors.backends.tflite_metadata import read_contract, write_contract

TFLITE_INT8 = 9  # schema TensorType.INT8


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def tflite_io(path: str | Path) -> dict:
    """Shape, dtype and quantization of the single input and output."""
    it = _interpreter(Path(path))
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    return {"input_shape": [int(d) for d in i["shape"]], "input_dtype": np.dtype(i["dtype"]).name,
            "input_quant": tuple(i["quantization"]), "output_shape": [int(d) for d in o["shape"]],
            "output_dtype": np.dtype(o["dtype"]).name, "output_quant": tuple(o["quantization"])}


def _layout_of(shape: list[int]) -> str:
    from edge_agent.detectors.backends.base import layout_from_shape

    return layout_from_shape(shape) or "NHWC"


@contextlib.contextmanager
def _quiet(enabled: bool):
    """litert-torch and ai-edge-quantizer print progress per pass / op; keep the CLI output readable."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def export_tflite_fp32(module, out_path: str | Path, contract: InferenceContract,
                       input_size: tuple[int, int] = (320, 480), quiet: bool = True, frame_input: bool = True) -> Path:
    """fp32 .tflite with NHWC input/output at a fixed input size, contract in its metadata.

    ``frame_input``: the graph takes float32 BGR pixels 0..255 ``[1,H,W,3]`` and returns
    probabilities (``converters.frame_model``); otherwise normalised NHWC floats in, logits out.
    """
    import torch

    try:
        import litert_torch
    except ImportError as exc:
        raise ConvertError("TFLite export needs litert-torch: pip install 'crackseg-edge[convert]'") from exc
    from converters.export_onnx import check_input_size

    if isinstance(module, torch.jit.ScriptModule):
        raise ConvertError("TFLite export needs an eager PyTorch model (checkpoint, state_dict or .pt2); "
                           "TorchScript cannot be converted by litert-torch")
    out_path = Path(out_path)
    if frame_input:
        from converters.frame_model import export_graph

        wrapped, frame, contract = export_graph(module, contract, input_size, out_path, "float32")
        sample = (frame,)
    else:
        check_input_size(input_size, contract.stride)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        module.eval()
        wrapped = litert_torch.to_channel_last_io(module, args=[0], outputs=[0]).eval()
        sample = (torch.zeros(1, input_size[0], input_size[1], 3),)
        contract = contract.model_copy(update={"input_dtype": "float32", "output": "logits"})
    tmp = out_path.with_name(out_path.name + ".tmp.tflite")
    try:
        with _quiet(quiet), torch.no_grad():
            edge_model = litert_torch.convert(wrapped, sample)
            edge_model.export(str(tmp))
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ConvertError(f"TFLite conversion failed ({str(exc).splitlines()[0][:200]})") from exc
    io_info = tflite_io(tmp)
    layout = _layout_of(io_info["input_shape"])
    write_contract(tmp, contract.model_copy(update={"input_size": tuple(input_size), "layout": layout}), out_path)
    tmp.unlink(missing_ok=True)
    return out_path


def _pixel_range(calibration: dict, input_tensor: str) -> None:
    """The frame input's range is 0..255 by definition, not by what the calibration frames held:
    int8 scale 1, zero point -128, so the device feeds a uint8 frame with one XOR 0x80."""
    qsv = calibration.get(input_tensor)
    if qsv is None:
        raise ConvertError(f"TFLite calibration has no range for the input tensor '{input_tensor}'")
    qsv["min"] = np.zeros_like(np.asarray(qsv["min"]), dtype=np.float32)
    qsv["max"] = np.full_like(np.asarray(qsv["max"]), 255.0, dtype=np.float32)


def export_tflite_int8(fp32_path: str | Path, out_path: str | Path, reader: CalibrationReader,
                       progress: bool = True) -> Path:
    """Full-integer INT8 .tflite (int8 input and output) calibrated with ``reader``."""
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise ConvertError("TFLite INT8 needs ai-edge-quantizer: pip install 'crackseg-edge[convert]'") from exc

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    contract = read_contract(fp32_path)
    if contract is None:
        raise ConvertError(f"{fp32_path}: has no inference contract; export it with crackseg-convert export-tflite")
    it = _interpreter(fp32_path)
    signatures = it.get_signature_list()
    if len(signatures) != 1:
        raise ConvertError(f"{fp32_path}: expected one signature, found {len(signatures)}")
    sig_name, sig = next(iter(signatures.items()))
    if len(sig["inputs"]) != 1:
        raise ConvertError(f"{fp32_path}: expected one input, found {len(sig['inputs'])}")
    input_name = sig["inputs"][0]
    in_shape = [int(d) for d in it.get_input_details()[0]["shape"]]
    layout = _layout_of(in_shape)
    if isinstance(reader, ImageFolderCalibrationReader):
        reader = reader.adapted(contract)
    samples = []
    for batch in iter_batches(reader, layout, "float32"):
        if list(batch.shape) != in_shape:
            raise ConvertError(f"calibration batch shape {list(batch.shape)} does not match the model input "
                               f"{in_shape}; build the reader with the model's contract (same input size)")
        samples.append({input_name: batch})
    if not samples:
        raise ConvertError("the calibration reader gave no data: check --calib")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    q = quantizer.Quantizer(str(fp32_path), recipe.static_wi8_ai8())
    with tempfile.TemporaryDirectory(prefix="crackseg-tflq-") as tmp:
        q_path = Path(tmp) / "int8.tflite"
        try:
            with _quiet(not progress):
                calibration = q.calibrate({sig_name: samples}, num_threads=max(1, os.cpu_count() or 1))
                if contract.input_dtype == "uint8":
                    _pixel_range(calibration, it.get_input_details()[0]["name"])
                q.quantize(calibration).export_model(str(q_path), overwrite=True)
        except Exception as exc:
            raise ConvertError(f"TFLite INT8 quantization failed ({str(exc).splitlines()[0][:200]})") from exc
        info = tflite_io(q_path)
        if info["input_dtype"] != "int8" or info["output_dtype"] != "int8":
            # drop the float Quantize/Dequantize ends so the device feeds and reads int8 directly
            from ai_edge_litert import _pywrap_modify_model_interface as mmi

            fixed = Path(tmp) / "int8_io.tflite"
            if mmi.modify_model_interface(str(q_path), str(fixed), TFLITE_INT8, TFLITE_INT8) != 0:
                raise ConvertError(f"{fp32_path}: could not make the INT8 model's input/output int8")
            q_path = fixed
            info = tflite_io(q_path)
        if info["input_dtype"] != "int8":
            raise ConvertError(f"{fp32_path}: INT8 model input is {info['input_dtype']}, expected int8")
        write_contract(q_path, contract.model_copy(update={"layout": _layout_of(info["input_shape"])}), out_path)
    return out_path
