"""Static INT8 quantization of the fp32 ONNX model (QDQ, per-channel weights, MinMax).

Why these settings (measured here, see docs/converter.md): QDQ with per-channel int8
weights and MinMax calibration; Entropy calibration gave a byte-identical model at 8x the
time and Percentile a 6x larger max error. Activations default to *uint8* (U8S8): with
int8 activations (S8S8) onnxruntime 1.32 on x86 left 8 of the reference network's 27
convolutions in float, wrapped in 16 Transposes and extra Q/DQ pairs, and the int8 model
ran 2.3x *slower* than fp32; with U8S8 all 27 became QLinearConv (concats QLinearConcat).
Calibration inputs go through the *runtime's* preprocessing (``edge_agent.detectors.
preprocess``: same tiles, padding, normalisation), so the ranges seen in calibration are
the ranges seen on the vehicle.

Calibration data follows onnxruntime's ``CalibrationDataReader`` protocol (``get_next()``
returning ``{input_name: array}`` or None, and ``rewind()``): pass your own reader to
calibrate on something else; the TFLite quantizer consumes the same protocol.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from converters.errors import ConvertError
from edge_agent.contract import InferenceContract


@runtime_checkable
class CalibrationReader(Protocol):
    """What the quantizers need: batches in the ONNX input layout (NCHW float32, normalized)."""

    def get_next(self) -> dict[str, np.ndarray] | None: ...

    def rewind(self) -> None: ...


def _hash_key(stem: str) -> str:
    return hashlib.sha256(stem.encode("utf-8")).hexdigest()


def calibration_images(folder: str | Path, count: int = 64, split: str = "train") -> list[Path]:
    """Up to ``count`` images of ``folder``: a stable pseudo-random pick (by stem hash).

    A labeled folder (``images/`` + ``masks/``) contributes its ``split`` part only, so a
    model is never calibrated on the images it is validated on.
    """
    from edge_agent.imageio import list_images
    from reference_model.dataset import list_pairs, select_split

    folder = Path(folder)
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        try:
            paths = [s.image_path for s in select_split(list_pairs(folder), split)]
        except FileNotFoundError as exc:
            raise ConvertError(f"calibration data: {exc}") from exc
    elif (folder / "images").is_dir():
        paths = list_images(folder / "images")
    elif folder.is_dir():
        paths = list_images(folder)
    else:
        raise ConvertError(f"calibration folder {folder} does not exist")
    if not paths:
        raise ConvertError(f"calibration folder {folder}: no images in the '{split}' split")
    return sorted(paths, key=lambda p: _hash_key(p.stem))[:count]


class ImageFolderCalibrationReader(CalibrationDataReader):
    """Images of a folder, preprocessed exactly like the runtime feeds them to the model.

    For a fixed-size contract each image contributes one runtime tile (chosen by a hash of
    its name, so the pick is stable); otherwise the whole image is padded to the stride.
    """

    def __init__(self, folder: str | Path, contract: InferenceContract, count: int = 64, split: str = "train",
                 input_name: str = "image"):
        from edge_agent.detectors.preprocess import Preprocessor

        if count < 1:
            raise ConvertError("--calib-count must be at least 1")
        self.paths = calibration_images(folder, count, split)
        self.contract = contract.model_copy(update={"layout": "NCHW"})
        self.pre = Preprocessor(self.contract)
        self.input_name = input_name
        self._pos = 0

    def __len__(self) -> int:
        return len(self.paths)

    def patch(self, path: Path) -> np.ndarray:
        """The normalized HxWx3 float32 patch the runtime would feed for this image."""
        from edge_agent.imageio import read_image

        frame = read_image(path)
        if self.pre.strategy == "pad":
            return self.pre.normalize(self.pre.pad_frame(frame))
        tiles = self.pre.tiles(frame)
        tile = tiles[int(_hash_key(path.stem)[:8], 16) % len(tiles)]
        return self.pre.normalize(self.pre.tile_patch(frame, tile))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.paths):
            return None
        path = self.paths[self._pos]
        self._pos += 1
        return {self.input_name: self.pre.to_layout(self.patch(path))}

    def rewind(self) -> None:
        self._pos = 0


def iter_batches(reader: CalibrationReader, layout: str = "NCHW") -> Iterator[np.ndarray]:
    """Every batch of a reader (from the start), converted to ``layout``."""
    reader.rewind()
    while (feed := reader.get_next()) is not None:
        if len(feed) != 1:
            raise ConvertError(f"calibration reader gave {len(feed)} inputs; the model has one image input")
        batch = np.asarray(next(iter(feed.values())), dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ConvertError(f"calibration batch shape {batch.shape} is not 1x3xHxW (NCHW)")
        yield np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) if layout == "NHWC" else batch


class _CountingReader(CalibrationDataReader):
    """Wraps a user reader: counts batches and reports progress, so an empty reader is caught."""

    def __init__(self, reader: CalibrationReader, progress=None):
        self.reader, self.count, self.progress = reader, 0, progress

    def get_next(self):
        item = self.reader.get_next()
        if item is not None:
            self.count += 1
            if self.progress is not None:
                self.progress.update(1)
        return item

    def rewind(self):
        self.reader.rewind()


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

    if activation_type not in ACTIVATION_TYPES:
        raise ConvertError(f"activation type '{activation_type}' must be one of {', '.join(ACTIVATION_TYPES)}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    contract = get_onnx_contract(fp32_path)
    if contract is None:
        raise ConvertError(f"{fp32_path}: has no inference contract; export it with crackseg-convert export-onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    reader.rewind()
    with tempfile.TemporaryDirectory(prefix="crackseg-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        except Exception:  # pre-processing only helps; a model it cannot handle still quantizes
            pre = fp32_path
        total = len(reader) if hasattr(reader, "__len__") else None
        bar = tqdm(total=total, desc="calibrate onnx", disable=not progress, mininterval=2)
        counting = _CountingReader(reader, bar)
        q_tmp = Path(tmp) / "int8.onnx"
        # No CalibMaxIntermediateOutputs: onnxruntime 1.32 drops each flushed chunk without merging its
        # ranges; MinMax only keeps per-tensor min/max per batch anyway, so memory stays small.
        try:
            quantize_static(str(pre), str(q_tmp), counting, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
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
        set_onnx_contract(q_tmp, contract, out_path)
    reader.rewind()
    return out_path

