"""TFLite backend on ai-edge-litert (LiteRT); ``tflite_runtime`` only as a slow fallback.

Full-integer models take int8 in and out: inputs are quantized and outputs dequantized
with each tensor's own scale and zero point, so the caller always sees float values.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from edge_agent.contract import InferenceContract
from edge_agent.detectors.backends.base import layout_from_shape
from edge_agent.detectors.errors import BackendUnavailableError, ModelError
from edge_agent.util.cpus import threads_per_worker

log = logging.getLogger(__name__)


def load_interpreter_class():
    """ai_edge_litert's Interpreter, else tflite_runtime's with a warning, else a clear error."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError as exc:
        raise BackendUnavailableError(
            "no TFLite interpreter installed: pip install 'crackseg-edge[tflite]' (ai-edge-litert), "
            "or use --backend onnx") from exc
    warnings.warn("using the legacy tflite_runtime: it needs numpy<2 and ran int8 models ~7x slower than "
                  "ai-edge-litert here; install ai-edge-litert instead", RuntimeWarning, stacklevel=2)
    return Interpreter


class TFLiteBackend:
    name = "tflite"
    thread_safe = False  # one Interpreter per thread

    def __init__(self, path: str | Path, contract: InferenceContract | None = None, threads: int | None = None):
        path = Path(path)
        interpreter_cls = load_interpreter_class()
        try:
            # LiteRT left to itself runs one thread: "no count" means every usable CPU here
            self.interpreter = interpreter_cls(model_path=str(path), num_threads=threads_per_worker(threads))
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelError(f"{path}: not a loadable TFLite model ({str(exc).splitlines()[0][:200]}); "
                             "re-export it with crackseg-convert export-tflite") from exc
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path}: expected one input and one output tensor, found "
                             f"{len(inputs)} and {len(outputs)}")
        self._in, self._out = inputs[0], outputs[0]
        if contract is None:
            from edge_agent.detectors.backends.tflite_metadata import read_contract

            contract = read_contract(path)
            if contract is None:
                raise ModelError(f"{path}: the model carries no inference contract; export it with "
                                 "crackseg-convert export-tflite or load it through a bundle")
        shape = [int(d) for d in self._in["shape"]]
        layout = layout_from_shape(shape) or contract.layout
        spatial = shape[2:4] if layout == "NCHW" else shape[1:3]
        self.contract = contract.model_copy(update={"layout": layout, "input_size": (spatial[0], spatial[1])})
        self._in_dtype = self._in["dtype"]
        self._in_scale, self._in_zero = self._in["quantization"]
        self._out_scale, self._out_zero = self._out["quantization"]
        self.precision = "int8" if np.issubdtype(self._in_dtype, np.integer) else "fp32"
        self._pixels_as_int8 = bool(self._in_dtype == np.int8 and self._in_scale == 1.0 and self._in_zero == -128)
        if self.precision == "int8" and not self._in_scale:
            raise ModelError(f"{path}: integer input tensor without quantization parameters")

    def _quantize(self, batch: np.ndarray) -> np.ndarray:
        """Float (or uint8 pixel) input -> the integer input tensor, with the tensor's own parameters.

        uint8 pixels into an int8 tensor with scale 1 and zero point -128 (what full-integer
        quantization gives a graph whose input range is 0..255) is exact as one XOR 0x80.
        """
        if batch.dtype == np.uint8 and self._in_dtype == np.int8 and self._pixels_as_int8:
            return (batch ^ np.uint8(0x80)).view(np.int8)
        if batch.dtype == self._in_dtype and batch.dtype == np.uint8 and self._in_scale == 1.0 and self._in_zero == 0:
            return batch
        info = np.iinfo(self._in_dtype)
        q = np.round(batch.astype(np.float32) / self._in_scale + self._in_zero)
        return np.clip(q, info.min, info.max).astype(self._in_dtype)

    @property
    def output_quantization(self) -> tuple[float, int] | None:
        """(scale, zero point) of an 8-bit output tensor; None for a float output."""
        if self._out["dtype"] in (np.int8, np.uint8) and self._out_scale:
            return float(self._out_scale), int(self._out_zero)
        return None

    def run_quantized(self, batch: np.ndarray) -> np.ndarray:
        """The output tensor as the model computed it (8-bit codes, not dequantized)."""
        if np.issubdtype(self._in_dtype, np.integer):
            batch = self._quantize(batch)
        else:
            batch = batch.astype(self._in_dtype, copy=False)
        self.interpreter.set_tensor(self._in["index"], batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"])

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.run_quantized(batch)
        if np.issubdtype(out.dtype, np.integer) and self._out_scale:
            out = (out.astype(np.float32) - self._out_zero) * self._out_scale
        return out
