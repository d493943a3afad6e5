"""Inference backends: each wraps one runtime behind ``InferenceBackend``."""

from edge_agent.detectors.backends.base import InferenceBackend

__all__ = ["InferenceBackend"]
