"""Static INT8 quantization of the fp32 ONNX model (QDQ, per-channel weights, MinMax).

Why these settings (measured here, see docs/converter.md): QDQ with per-channel int8
weights and MinMax calibration; Entropy calibration gave a byte-identical model at 8x the
time and Percentile a 6x larger max error. Activations default to *uint8* (U8S8): with
int8 activations (S8S8) onnxruntime 1.32 on x86 left 8 of the reference network's 27
convolutions in float, wrapped in 16 Transposes and extra Q/DQ pairs, and the int8 model
ran 2.3x *slower* than fp32; with U8S8 all 27 became QLinearConv (concats QLinearConcat).

Frame-input graphs (``converters.frame_model``) get fixed ranges where the values are known:
pixels 0..255 (scale 1, zero point 0: the uint8 frame *is* the quantized tensor) and
probabilities 0..1. After quantization one pattern onnxruntime 1.32 leaves in float is
rewritten (``converters.onnx_graph``): the frame's ``Cast -> QuantizeLinear`` (an identity on
uint8) is removed.

Calibration data: ``converters.calibration`` (frames at the artifact's size, onnxruntime's
``CalibrationDataReader`` protocol; pass your own reader to calibrate on something else).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sized
from pathlib import Path

from converters.calibration import CalibrationReader, CountingReader, ImageFolderCalibrationReader
from converters.errors import ConvertError

ACTIVATION_TYPES = ("uint8", "int8")


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, reader: CalibrationReader,
                  per_channel: bool = True, activation_type: str = "uint8", progress: bool = True) -> Path:
    """INT8 QDQ model from ``fp32_path``, calibrated with ``reader``; the contract metadata is kept."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from tqdm import tqdm

    from converters.export_onnx import get_onnx_contract, op_types, set_onnx_contract
    from converters.onnx_graph import known_ranges, simplify_quantized

    if activation_type not in ACTIVATION_TYPES:
        raise ConvertError(f"activation type '{activation_type}' must be one of {', '.join(ACTIVATION_TYPES)}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    contract = get_onnx_contract(fp32_path)
    if contract is None:
        raise ConvertError(f"{fp32_path}: has no inference contract; export it with crackseg-convert export-onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(reader, ImageFolderCalibrationReader):
        reader = reader.adapted(contract)
    reader.rewind()
    with tempfile.TemporaryDirectory(prefix="crackseg-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        except Exception:  # pre-processing only helps; a model it cannot handle still quantizes
            pre = fp32_path
        total = len(reader) if isinstance(reader, Sized) else None
        bar = tqdm(total=total, desc="calibrate onnx", disable=not progress, mininterval=2)
        counting = CountingReader(reader, bar)
        overrides = known_ranges(pre) if contract.input_dtype == "uint8" else {}
        q_tmp = Path(tmp) / "int8.onnx"
        # No CalibMaxIntermediateOutputs: onnxruntime 1.32 drops each flushed chunk without merging its
        # ranges; MinMax only keeps per-tensor min/max per batch anyway, so memory stays small.
        try:
            quantize_static(str(pre), str(q_tmp), counting, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"TensorQuantOverrides": overrides} if overrides else None)
        except Exception as exc:
            if counting.count == 0:
                raise ConvertError("the calibration reader gave no data: check --calib (folder with images, "
                                   "or images/ + masks/ with a non-empty train split)") from exc
            raise ConvertError(f"ONNX quantization failed ({str(exc).splitlines()[0][:200]})") from exc
        finally:
            bar.close()
        if counting.count == 0:
            raise ConvertError("the calibration reader gave no data: check --calib")
        if "QuantizeLinear" not in op_types(q_tmp):
            raise ConvertError(f"{fp32_path}: quantization produced no QuantizeLinear node; nothing was quantized")
        if contract.input_dtype == "uint8":
            simplify_quantized(q_tmp)
        set_onnx_contract(q_tmp, contract, out_path)
    reader.rewind()
    return out_path

