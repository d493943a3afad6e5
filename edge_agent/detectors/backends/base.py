"""The small interface every inference backend implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edge_agent.contract import InferenceContract


def layout_from_shape(shape: list | tuple, channels: int = 3) -> str | None:
    """'NCHW' or 'NHWC' when a 4-D input shape says so unambiguously, else None."""
    if len(shape) != 4:
        return None
    c1, c3 = shape[1], shape[3]
    if c1 == channels and c3 != channels:
        return "NCHW"
    if c3 == channels and c1 != channels:
        return "NHWC"
    return None


class InferenceBackend(Protocol):
    """Runs one batch-1 input (float32, normalized, in ``contract.layout``) and returns raw output."""

    name: str
    contract: InferenceContract
    precision: str  # "fp32" or "int8" (what the artifact computes in)

    def run(self, batch: np.ndarray) -> np.ndarray: ...
