"""The agent's mask straight from a full-integer model's 8-bit output equals the float path's,
pixel for pixel, on the shipped INT8 TFLite artifacts and a real road image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.detectors import open_model
from edge_agent.detectors.quantized import lookup_tables, probability_and_mask
from edge_agent.detectors.runtime import REFERENCE_BUNDLE


def test_tables_reproduce_the_float_dequantization_and_threshold():
    scale, zero = 1 / 256, -128
    as_byte, mask = lookup_tables("int8", scale, zero, 0.2)
    codes = np.arange(-128, 128, dtype=np.int8)
    probability = (codes.astype(np.float32) - zero) * scale
    np.testing.assert_array_equal(mask[codes.view(np.uint8)], probability >= 0.2)
    assert np.abs(as_byte[codes.view(np.uint8)] / 255.0 - probability).max() <= 1 / 510 + 1e-9
    # the threshold sits exactly on a code: that code is in the mask, the one below is not
    on_code = float((np.float32(-77) - zero) * scale)
    _, mask = lookup_tables("int8", scale, zero, on_code)
    assert mask[np.int8(-77).view(np.uint8)] == 1 and mask[np.int8(-78).view(np.uint8)] == 0


def test_uint8_outputs_and_views_are_read_as_they_are():
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    prob, mask = probability_and_mask(raw[2:10, 3:12], 1 / 255, 0, 0.5)  # a cropped (strided) view
    expected = raw[2:10, 3:12].astype(np.float32) / 255
    np.testing.assert_array_equal(mask, expected >= 0.5)
    assert prob.dtype == np.uint8 and mask.dtype == bool and prob.shape == (8, 9)
    with pytest.raises(ValueError, match="8-bit"):
        probability_and_mask(raw.astype(np.float32), 1.0, 0, 0.5)


def road_frame(height: int, width: int) -> np.ndarray:
    image = cv2.imread(str(REFERENCE_BUNDLE / "selftest" / "input.png"), cv2.IMREAD_COLOR)
    assert image is not None
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("size,frame_size", [("320x480", (320, 480)), ("320x480", (310, 470)),
                                             ("720x1280", (720, 1280))])
def test_shipped_int8_tflite_masks_match_the_float_path(size, frame_size):
    pytest.importorskip("ai_edge_litert")
    seg = open_model(next(REFERENCE_BUNDLE.glob(f"*{size}-int8.tflite")), threads=1)
    frame = road_frame(*frame_size)
    reference = seg.probabilities(frame)
    for threshold in (seg.threshold, 0.5):
        prob, mask = seg.probability_and_mask(frame, threshold)
        assert prob.dtype == np.uint8 and prob.shape == frame_size
        np.testing.assert_array_equal(mask, reference >= threshold)
        assert np.abs(prob / 255.0 - reference).max() <= 1 / 510 + 1e-6
    assert 0.001 < mask.mean() < 0.5  # a real crack image: the comparison covers both classes


def test_tiled_and_float_artifacts_keep_the_float_map():
    pytest.importorskip("ai_edge_litert")
    tiled = open_model(next(REFERENCE_BUNDLE.glob("*320x480-int8.tflite")), threads=1)
    frame = road_frame(400, 700)
    prob, mask = tiled.probability_and_mask(frame, 0.3)
    assert tiled.last_plan is not None and tiled.last_plan.strategy == "tile"
    assert prob.dtype == np.float32
    np.testing.assert_array_equal(mask, tiled.probabilities(frame) >= 0.3)
    fp32 = open_model(next(REFERENCE_BUNDLE.glob("*320x480-fp32.tflite")), threads=1)
    prob, _ = fp32.probability_and_mask(road_frame(320, 480), 0.3)
    assert prob.dtype == np.float32
