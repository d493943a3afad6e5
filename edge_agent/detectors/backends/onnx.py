"""onnxruntime backend: CPU everywhere, CUDA / TensorRT on Jetson when installed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_agent.contract import CONTRACT_METADATA_KEY, InferenceContract
from edge_agent.detectors.backends.base import layout_from_shape
from edge_agent.detectors.backends.providers import PROVIDER_NAMES
from edge_agent.detectors.errors import BackendUnavailableError, ModelError

log = logging.getLogger(__name__)



def resolve_providers(requested: list[str] | None) -> list[str]:
    """Map aliases to onnxruntime provider names and keep those installed (CPU always last)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [PROVIDER_NAMES.get(p.lower(), p) for p in (requested or ["cpu"])]
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if missing:
        log.warning("onnxruntime providers not available here, skipped: %s (available: %s)",
                    ", ".join(missing), ", ".join(available))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxBackend:
    name = "onnx"
    thread_safe = True  # InferenceSession.run may be called from several threads at once

    def __init__(self, path: str | Path, contract: InferenceContract | None = None, threads: int | None = None,
                 providers: list[str] | None = None, arena: bool | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime "
                                          "(or onnxruntime-gpu from the Jetson Zoo on Jetson)") from exc
        path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # The arena trades memory for speed, and the trade flips with the input size: at 320x480
        # its pooled over-allocation cost tens of MB of RSS and bought nothing measurable, at
        # 720x1280 without it every full-resolution buffer (up to 59 MB) is mapped and faulted
        # in anew on each call: 255 ms of CPU per frame instead of 113 (measured, 1 thread).
        opts.enable_cpu_mem_arena = _large_input(contract) if arena is None else arena
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=resolve_providers(providers))
        except Exception as exc:
            raise ModelError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]}); "
                             "re-export it with crackseg-convert export-onnx") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{path}: expected one image input, found {len(inputs)}")
        self.input_name = inputs[0].name
        self.providers = self.session.get_providers()
        meta = self.session.get_modelmeta().custom_metadata_map
        if contract is None:
            text = meta.get(CONTRACT_METADATA_KEY)
            if not text:
                raise ModelError(f"{path}: the model carries no inference contract ('{CONTRACT_METADATA_KEY}' "
                                 "metadata); export it with crackseg-convert or load it through a bundle")
            contract = InferenceContract.from_json(text)
        shape = inputs[0].shape
        updates: dict = {}
        self.input_dtype = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}.get(inputs[0].type)
        if self.input_dtype is None:
            raise ModelError(f"{path}: input type {inputs[0].type} is not supported (uint8 pixels or float32)")
        graph_dtype = "uint8" if self.input_dtype is np.uint8 else "float32"
        if graph_dtype != contract.input_dtype:
            updates["input_dtype"] = graph_dtype  # the graph is the truth about what it takes
        actual_layout = layout_from_shape(shape)
        if actual_layout and actual_layout != contract.layout:
            updates["layout"] = actual_layout
        spatial = shape[2:4] if (actual_layout or contract.layout) == "NCHW" else shape[1:3]
        if all(isinstance(d, int) and d > 0 for d in spatial):
            updates["input_size"] = (int(spatial[0]), int(spatial[1]))
        self.contract = contract.model_copy(update=updates)
        self.precision = onnx_precision(path)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        return self.session.run(None, {self.input_name: batch})[0]


ARENA_MIN_PIXELS = 500_000  # inputs from about 720x720 up run with onnxruntime's memory arena


def _large_input(contract: InferenceContract | None) -> bool:
    size = contract.input_size if contract is not None else None
    return bool(size and size[0] * size[1] >= ARENA_MIN_PIXELS)


def onnx_precision(path: Path) -> str:
    """'int8' when the graph holds quantization operators, else 'fp32'.

    Operator names are stored as plain strings in the protobuf, so a byte search answers this
    without importing the ``onnx`` package (~25 MB of RSS the device does not otherwise need).
    """
    data = Path(path).read_bytes()
    return "int8" if any(op in data for op in (b"QuantizeLinear", b"QLinearConv", b"ConvInteger")) else "fp32"
