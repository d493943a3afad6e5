"""Frames in, model inputs out (and model outputs back), driven by the artifact's inference contract.

Frames are never shrunk to fit a model: cracks are 1-10 px wide and would vanish. A frame
reaches an artifact in one of three ways (chosen per frame size in ``plan.py``):
- *full*: an artifact of (about) the frame's own size takes the whole frame, reflect-padded
  up to its input size when needed;
- *pad*: an artifact with dynamic height/width takes the frame padded to the stride;
- *tile*: overlapping tiles of the artifact's size cover the frame; the outputs are blended
  with weights that fall off towards interior tile edges (no seams).

What one patch costs: a uint8 artifact (normalisation inside its graph) takes the patch as
it is (a view for a whole frame, one copy for a tile or a padded frame); a float artifact
gets one normalising pass into a buffer that is reused from frame to frame, plus the
transpose to NCHW when the artifact wants it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.contract import InferenceContract


@dataclass(frozen=True)
class Tile:
    y: int
    x: int
    h: int  # valid (unpadded) height inside the tile
    w: int


def _positions(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = int(np.ceil((length - tile) / step)) + 1
    return [int(round(p)) for p in np.linspace(0, length - tile, n)]


def plan_tiles(height: int, width: int, tile_h: int, tile_w: int, overlap: int = 32) -> list[Tile]:
    """Tile origins that cover a frame with at least ``overlap`` px shared between neighbours."""
    return [Tile(y, x, min(tile_h, height - y), min(tile_w, width - x))
            for y in _positions(height, tile_h, overlap) for x in _positions(width, tile_w, overlap)]


def _ramp(length: int, ramp: int, fade_start: bool, fade_end: bool) -> np.ndarray:
    w = np.ones(length, dtype=np.float32)
    r = min(ramp, max(1, length // 4))
    values = (np.arange(r, dtype=np.float32) + 1.0) / (r + 1.0)
    if fade_start:
        w[:r] = values
    if fade_end:
        w[length - r:] = values[::-1]
    return w


def blend_weights(tiles: list[Tile], frame_h: int, frame_w: int, overlap: int) -> list[np.ndarray]:
    """Per tile, weights (h x w of its valid region) that sum to 1 over the frame.

    Each tile fades only at edges it shares with another tile; dividing by the summed weights
    here, once per frame size, saves the per-frame division.
    """
    ramp = max(1, overlap // 2)
    raw = [np.outer(_ramp(t.h, ramp, t.y > 0, t.y + t.h < frame_h), _ramp(t.w, ramp, t.x > 0, t.x + t.w < frame_w))
           for t in tiles]
    total = np.zeros((frame_h, frame_w), dtype=np.float32)
    for t, w in zip(tiles, raw):
        total[t.y:t.y + t.h, t.x:t.x + t.w] += w
    inv = 1.0 / np.maximum(total, 1e-6)
    return [np.ascontiguousarray(w * inv[t.y:t.y + t.h, t.x:t.x + t.w]) for t, w in zip(tiles, raw)]


def output_map(raw: np.ndarray, height: int, width: int) -> np.ndarray:
    """A model output (1x1xHxW, 1xHxWx1 or HxW) as its 2-D map cropped to ``height`` x ``width`` (a view)."""
    out = np.asarray(raw)
    # the output's own layout (a uint8 NHWC graph may still end in an NCHW map): a trailing
    # axis of 1 is the channel of an NHWC map; padded inputs are never 1 px wide
    hw = out.shape[-3:-1] if out.ndim >= 3 and out.shape[-1] == 1 else out.shape[-2:]
    return out.reshape(hw)[:height, :width]


def pad_to(patch: np.ndarray, height: int, width: int) -> np.ndarray:
    """``patch`` reflect-padded at the bottom/right up to ``height`` x ``width`` (one copy)."""
    h, w = patch.shape[:2]
    if h == height and w == width:
        return patch
    if h > 1 and w > 1:
        # reflection needs a pad smaller than the patch: repeat until it fits (tiny patches only)
        while patch.shape[0] < height or patch.shape[1] < width:
            ph = min(height - patch.shape[0], patch.shape[0] - 1)
            pw = min(width - patch.shape[1], patch.shape[1] - 1)
            patch = cv2.copyMakeBorder(patch, 0, max(ph, 0), 0, max(pw, 0), cv2.BORDER_REFLECT_101)
        return patch
    return cv2.copyMakeBorder(patch, 0, height - h, 0, width - w, cv2.BORDER_REPLICATE)


class InputAdapter:
    """Turns BGR uint8 patches into one artifact's input and its output into probabilities."""

    def __init__(self, contract: InferenceContract):
        self.contract = contract
        self.uint8 = contract.input_dtype == "uint8"
        self.nchw = contract.layout == "NCHW"
        order = [2, 1, 0] if contract.color_order == "RGB" else [0, 1, 2]
        # (pixel - mean) / std with the channels still in BGR order: the reorder happens in the
        # transpose (NCHW) or as one fancy-index (NHWC), never as an extra pass over the pixels.
        inv = np.argsort(order)
        self._mean_bgr = np.asarray(contract.mean, dtype=np.float32)[inv]
        self._inv_std_bgr = (1.0 / np.asarray(contract.std, dtype=np.float32))[inv]
        self._order = np.asarray(order)
        self._reorder = order != [0, 1, 2]
        self._buffers: dict[tuple[int, int], tuple[np.ndarray, np.ndarray | None]] = {}

    def normalize(self, patch_bgr: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 BGR -> float32 HxWx3 in the contract's colour order, (x - mean) / std (a new array)."""
        out = (patch_bgr.astype(np.float32) - self._mean_bgr) * self._inv_std_bgr
        return out[..., self._order] if self._reorder else out

    def prepare(self, patch_bgr: np.ndarray) -> np.ndarray:
        """The batch-1 input for one patch that already has the artifact's size."""
        if self.uint8:
            return np.ascontiguousarray(patch_bgr)[None]
        h, w = patch_bgr.shape[:2]
        hwc, chw = self._buffers.get((h, w), (None, None))
        if hwc is None:
            hwc = np.empty((h, w, 3), dtype=np.float32)
            chw = np.empty((1, 3, h, w), dtype=np.float32) if self.nchw else None
            self._buffers[(h, w)] = (hwc, chw)
        np.subtract(patch_bgr, self._mean_bgr, out=hwc, dtype=np.float32)
        np.multiply(hwc, self._inv_std_bgr, out=hwc)
        if self.nchw:
            assert chw is not None
            for dst, src in enumerate(self._order):
                chw[0, dst] = hwc[:, :, src]
            return chw
        return (hwc[..., self._order] if self._reorder else hwc)[None]

    def to_layout(self, normalized_hwc: np.ndarray) -> np.ndarray:
        """Add the batch axis in the artifact's layout (for calibration data readers)."""
        if self.nchw:
            return np.ascontiguousarray(normalized_hwc.transpose(2, 0, 1)[None])
        return np.ascontiguousarray(normalized_hwc[None])

    def probabilities(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        """Model output (1x1xHxW, 1xHxWx1 or HxW) -> float32 probabilities, cropped to ``height`` x ``width``."""
        out = output_map(raw, height, width)
        if self.contract.output == "logits":
            clipped = np.clip(out, -30.0, 30.0).astype(np.float32, copy=False)
            return 1.0 / (1.0 + np.exp(-clipped))
        return out.astype(np.float32, copy=False)
