"""The one preprocessing implementation, driven by the model's inference contract.

Frames are never shrunk: cracks are 1-10 px wide and would vanish. Two strategies, chosen
by the artifact:
- *pad*: the artifact accepts any size that is a multiple of ``stride`` -> the frame is
  reflect-padded up to the next multiple and the output is cropped back;
- *tile*: the artifact has a fixed input size (INT8 models are exported at a fixed shape
  because dynamic shapes made them slower) -> the frame is covered by overlapping tiles of
  that size, each inferred at native resolution, and the outputs are blended with weights
  that fall off towards interior tile edges (no seams). A frame smaller than one tile is
  reflect-padded into a single tile.
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


def _ramp(length: int, valid: int, ramp: int, fade_start: bool, fade_end: bool) -> np.ndarray:
    w = np.ones(length, dtype=np.float32)
    r = min(ramp, max(1, valid // 4))
    ramp_vals = (np.arange(r, dtype=np.float32) + 1.0) / (r + 1.0)
    if fade_start:
        w[:r] = ramp_vals
    if fade_end:
        w[valid - r:valid] = ramp_vals[::-1]
    return w


class Preprocessor:
    """Turns a BGR uint8 frame into model inputs and model outputs back into a probability map."""

    def __init__(self, contract: InferenceContract, tile_overlap: int = 32):
        self.contract = contract
        self.tile_overlap = tile_overlap
        order = [2, 1, 0] if contract.color_order == "RGB" else [0, 1, 2]
        self._channel_order = np.array(order)
        self._mean = np.asarray(contract.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.asarray(contract.std, dtype=np.float32)

    @property
    def strategy(self) -> str:
        return "tile" if self.contract.input_size else "pad"

    def normalize(self, patch_bgr: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 BGR -> float32 HxWx3 in the contract's colour order, (x - mean) / std."""
        img = patch_bgr[..., self._channel_order] if self.contract.color_order == "RGB" else patch_bgr
        return (img.astype(np.float32) - self._mean) * self._inv_std

    def to_layout(self, normalized_hwc: np.ndarray) -> np.ndarray:
        """Add the batch axis in the artifact's layout."""
        if self.contract.layout == "NCHW":
            return np.ascontiguousarray(normalized_hwc.transpose(2, 0, 1)[None])
        return np.ascontiguousarray(normalized_hwc[None])

    def to_probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Model output (any of 1x1xHxW, 1xHxWx1, HxW) -> float32 HxW probabilities."""
        out = np.asarray(raw, dtype=np.float32).reshape(raw.shape[-2:] if self.contract.layout == "NCHW"
                                                        else raw.shape[-3:-1])
        if self.contract.output == "logits":
            out = 1.0 / (1.0 + np.exp(-np.clip(out, -30.0, 30.0)))
        return out

    # -- strategies -------------------------------------------------------------------
    def pad_frame(self, frame: np.ndarray) -> np.ndarray:
        s = self.contract.stride
        h, w = frame.shape[:2]
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            mode = cv2.BORDER_REFLECT_101 if h > 1 and w > 1 else cv2.BORDER_REPLICATE
            frame = cv2.copyMakeBorder(frame, 0, ph, 0, pw, mode)
        return frame

    def tiles(self, frame: np.ndarray) -> list[Tile]:
        th, tw = self.contract.input_size  # type: ignore[misc]
        return plan_tiles(frame.shape[0], frame.shape[1], th, tw, self.tile_overlap)

    def tile_patch(self, frame: np.ndarray, tile: Tile) -> np.ndarray:
        th, tw = self.contract.input_size  # type: ignore[misc]
        patch = frame[tile.y:tile.y + tile.h, tile.x:tile.x + tile.w]
        if tile.h < th or tile.w < tw:
            mode = cv2.BORDER_REFLECT_101 if tile.h > 1 and tile.w > 1 else cv2.BORDER_REPLICATE
            # reflect padding needs the pad to be smaller than the patch: repeat until it fits
            while patch.shape[0] < th or patch.shape[1] < tw:
                ph = min(th - patch.shape[0], patch.shape[0] - 1) if mode == cv2.BORDER_REFLECT_101 else th - patch.shape[0]
                pw = min(tw - patch.shape[1], patch.shape[1] - 1) if mode == cv2.BORDER_REFLECT_101 else tw - patch.shape[1]
                patch = cv2.copyMakeBorder(patch, 0, max(ph, 0), 0, max(pw, 0), mode)
        return patch

    def tile_weights(self, tile: Tile, frame_h: int, frame_w: int) -> np.ndarray:
        """Blend weights (h x w of the valid region): fade only at edges shared with another tile."""
        ramp = max(1, self.tile_overlap // 2)
        wy = _ramp(tile.h, tile.h, ramp, tile.y > 0, tile.y + tile.h < frame_h)
        wx = _ramp(tile.w, tile.w, ramp, tile.x > 0, tile.x + tile.w < frame_w)
        return np.outer(wy, wx)
