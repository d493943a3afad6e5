"""Inference: the model contract, one preprocessing, and the onnxruntime / TFLite backends."""

from edge_agent.contract import InferenceContract
from edge_agent.detectors.errors import BackendUnavailableError, ModelError
from edge_agent.detectors.runtime import FrameError, ModelInfo, Segmenter, open_model

__all__ = ["BackendUnavailableError", "FrameError", "InferenceContract", "ModelError", "ModelInfo", "Segmenter",
           "open_model"]
