"""Masks and probability maps straight from a full-integer model's 8-bit output.

A full-integer TFLite model ends in an int8 (or uint8) probability map: 256 possible values.
Dequantizing 0.9 M of them to float32, then thresholding, costs three full-frame float passes
per 720p frame; two 256-entry lookup tables (``cv2.LUT``, one pass each) give the same mask,
bit for bit, and a uint8 probability map (0-255) for the confidence of each crack.

The mask table is built by dequantizing the 256 values exactly as the float path does
(``(q - zero_point) * scale`` in float32, compared with the threshold as float32), so a frame
gives the same mask on either path; the uint8 probability is that value x 255, rounded
(at most 1/510 from the float probability, finer than the model's own 1/256 steps).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=32)
def lookup_tables(dtype: str, scale: float, zero_point: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(probability as uint8 0-255, mask as 0/1) for each of the 256 byte values of the output."""
    codes = np.arange(256, dtype=np.uint8)
    values = codes.view(np.int8) if dtype == "int8" else codes
    probability = (values.astype(np.float32) - zero_point) * scale  # the float path's arithmetic
    mask = (probability >= threshold).astype(np.uint8)
    as_byte = np.clip(np.rint(probability.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return as_byte, mask


def probability_and_mask(raw: np.ndarray, scale: float, zero_point: int,
                         threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 probability map (0-255) and boolean mask of a 2-D int8/uint8 model output."""
    if raw.dtype not in (np.int8, np.uint8) or raw.ndim != 2:
        raise ValueError(f"expected a 2-D 8-bit output map, got {raw.dtype} {raw.shape}")
    as_byte, mask_table = lookup_tables(raw.dtype.name, float(scale), int(zero_point), float(threshold))
    codes = raw.view(np.uint8)
    probability = cv2.LUT(codes, as_byte)
    mask = cv2.LUT(codes, mask_table).view(bool)
    return probability, mask
