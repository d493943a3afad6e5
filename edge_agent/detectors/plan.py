"""Which artifact runs a frame of a given size, and how: decided once per frame size, then reused.

A camera delivers one frame size for hours, so everything that depends only on the size (the
resampled size, the artifact, the tiles, their blend weights) is computed once and cached.

Choice, for a frame of (h, w) after resampling to the model's ground resolution:
1. an artifact that *fits* (its input equals the frame padded to the stride, or wastes at
   most ``FIT_WASTE`` of its pixels on padding) runs the whole frame (``full``);
2. else an artifact with dynamic height/width runs the frame padded to the stride (``pad``);
3. else the frame is tiled with the fixed-size artifact of least estimated cost: tiles x
   (tile pixels + a per-call overhead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_agent.detectors.preprocess import Tile, blend_weights, plan_tiles

FIT_WASTE = 0.25  # a full-frame artifact may spend up to this fraction of its input on padding
CALL_OVERHEAD_PX = 50_000  # fixed cost of one inference call, in pixels of work (measured order of magnitude)
RESAMPLE_TOLERANCE = 0.05  # ground resolutions within 5 % are used as they are


@dataclass(frozen=True)
class FramePlan:
    """How frames of one size are segmented."""

    frame_size: tuple[int, int]
    work_size: tuple[int, int]  # after resampling to the model's ground resolution
    artifact: int  # index into the segmenter's artifacts
    strategy: str  # "full", "pad" or "tile"
    input_size: tuple[int, int]  # what the artifact is fed (for full/tile: its fixed input)
    tiles: tuple[Tile, ...] = ()
    weights: tuple[np.ndarray, ...] = field(default=(), repr=False)

    @property
    def resampled(self) -> bool:
        return self.work_size != self.frame_size

    def describe(self) -> str:
        size = f"{self.input_size[0]}x{self.input_size[1]}"
        how = {"full": f"whole frame on the {size} artifact", "pad": f"whole frame padded to {size}",
               "tile": f"{len(self.tiles)} tiles of {size}"}[self.strategy]
        if self.resampled:
            how += f", resampled {self.frame_size[0]}x{self.frame_size[1]} -> {self.work_size[0]}x{self.work_size[1]}"
        return how


def work_size(frame_size: tuple[int, int], scale: tuple[float, float] | None) -> tuple[int, int]:
    """The frame size after resampling by (sy, sx); unchanged within the tolerance."""
    h, w = frame_size
    if scale is None:
        return h, w
    sy, sx = scale
    if abs(sy - 1.0) <= RESAMPLE_TOLERANCE and abs(sx - 1.0) <= RESAMPLE_TOLERANCE:
        return h, w
    return max(1, round(h * sy)), max(1, round(w * sx))


def choose_plan(frame_size: tuple[int, int], sizes: Sequence[tuple[int, int] | None], stride: int,
                scale: tuple[float, float] | None = None, overlap: int = 32) -> FramePlan:
    """The plan for one frame size; ``sizes`` are the artifacts' input sizes (None = dynamic)."""
    h, w = work_size(frame_size, scale)
    ph, pw = h + (-h) % stride, w + (-w) % stride
    fixed = [(i, s) for i, s in enumerate(sizes) if s is not None]
    fitting = [(i, s) for i, s in fixed if s[0] >= ph and s[1] >= pw and (s[0] * s[1]) * (1 - FIT_WASTE) <= ph * pw]
    if fitting:
        i, s = min(fitting, key=lambda item: item[1][0] * item[1][1])
        return FramePlan(frame_size, (h, w), i, "full", s)
    dynamic = [i for i, s in enumerate(sizes) if s is None]
    if dynamic:
        return FramePlan(frame_size, (h, w), dynamic[0], "pad", (ph, pw))
    if not fixed:
        raise ValueError("no artifact to plan with")

    def cost(item: tuple[int, tuple[int, int]]) -> float:
        th, tw = item[1]
        n = len(plan_tiles(h, w, th, tw, overlap))
        return n * (th * tw + CALL_OVERHEAD_PX)

    i, s = min(fixed, key=cost)
    tiles = plan_tiles(h, w, s[0], s[1], overlap)
    if len(tiles) == 1:
        return FramePlan(frame_size, (h, w), i, "full", s)
    return FramePlan(frame_size, (h, w), i, "tile", s, tuple(tiles), tuple(blend_weights(tiles, h, w, overlap)))


def gsd_scale(frame_gsd: tuple[float, float] | None, model_gsd: float | None) -> tuple[float, float] | None:
    """(sy, sx) that brings frames from the camera's ground resolution to the model's, or None.

    A camera at 0.5 mm/px sees cracks twice as wide (in pixels) as a model trained at 1.0 mm/px
    knows them: its frames are shrunk by 0.5 before inference, and the output is resized back.
    Shrink only: an axis coarser than the model's is left as it is, since enlarging invents
    no detail (the shipped model scored 0.79 on frames enlarged 2x against 0.83 as they were).
    """
    if frame_gsd is None or model_gsd is None:
        return None
    gx, gy = frame_gsd
    if not all(math.isfinite(v) and v > 0 for v in (gx, gy, model_gsd)):
        return None
    sy, sx = min(gy / model_gsd, 1.0), min(gx / model_gsd, 1.0)
    return None if sy == 1.0 and sx == 1.0 else (sy, sx)
