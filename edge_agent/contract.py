"""The inference contract: how a model wants its frames and what its output means.

A leaf module on purpose: the converter writes it, the bundle manifest carries it and the
detectors read it, so none of those packages has to import another to share it.

It travels with the model (ONNX metadata, TFLite metadata, bundle manifest) so that the
runtime never guesses. One preprocessing implementation (``preprocess.py``) is driven by it.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CONTRACT_METADATA_KEY = "crackseg_contract"


class InferenceContract(BaseModel):
    """What a crack model expects as input and produces as output.

    - ``input_size``: fixed (height, width) the artifact was exported for, or ``None`` when
      the artifact accepts any size that is a multiple of ``stride``.
    - ``stride``: frames are padded to a multiple of it (the network's output stride).
    - ``layout``: NCHW (PyTorch/ONNX) or NHWC (TFLite).
    - ``color_order``, ``mean``, ``std``: pixel normalisation on 0-255 values:
      ``(pixel - mean) / std`` per channel in ``color_order``.
    - ``input_dtype``: ``float32`` (the runtime normalises as above and feeds floats) or
      ``uint8``: the artifact takes frames as OpenCV delivers them (uint8, BGR, HxWx3 in NHWC)
      and normalises inside its graph, so preprocessing is at most one copy; ``color_order``,
      ``mean`` and ``std`` then describe what the graph does. A full-integer TFLite artifact
      whose int8 input has scale 1 and zero point -128 takes those pixels with one XOR.
    - ``output``: ``logits`` (apply a sigmoid) or ``probabilities``.
    - ``threshold``: decision threshold on the probability, chosen on validation data.
    - ``gsd_mm_per_px``: the ground resolution (mm of road per pixel) the model was trained
      for; the runtime resamples frames from a camera configured at another resolution so
      cracks reach the model at the width it knows (None: use frames as they are). Only
      frames *finer* than it are shrunk: enlarging a coarser camera's frames invents no detail
      and scored worse than using them as they are (docs/model.md, scale section).
    - ``width_threshold``: the probability at which crack *widths* are measured (None: the
      decision threshold). A low decision threshold finds faint cracks but paints them wider
      than they are; widths read on ``probability >= width_threshold`` match careful labels.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    input_size: tuple[int, int] | None = None
    stride: int = Field(16, ge=1)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color_order: Literal["RGB", "BGR"] = "RGB"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_dtype: Literal["float32", "uint8"] = "float32"
    output: Literal["logits", "probabilities"] = "logits"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    gsd_mm_per_px: float | None = Field(None, gt=0.0, le=1000.0, allow_inf_nan=False)
    width_threshold: float | None = Field(None, gt=0.0, lt=1.0)

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("std values must be > 0")
        return v

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InferenceContract:
        return cls.model_validate(json.loads(text))
