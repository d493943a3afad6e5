"""Widths read at the model's width threshold: a crack painted wide at a low detection threshold
is measured on its confident core, on float and uint8 probability maps alike."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.config.measurement import MeasurementConfig
from edge_agent.measure.cracks import CrackMeasurer


def painted_crack(core_px: int = 5, halo_px: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A vertical crack: ``core_px`` columns at probability 0.95 inside ``halo_px`` columns of 0.3
    on each side, all of it above a 0.2 detection threshold."""
    prob = np.zeros((200, 120), np.float32)
    x0 = 60 - core_px // 2
    prob[20:180, x0 - halo_px:x0 + core_px + halo_px] = 0.3
    prob[20:180, x0:x0 + core_px] = 0.95
    return prob >= 0.2, prob


@pytest.fixture
def measurer() -> CrackMeasurer:
    return CrackMeasurer(MeasurementConfig(gsd_mm_per_px=1.0, min_length_mm=10.0))


def test_widths_come_from_the_confident_core(measurer):
    mask, prob = painted_crack()
    (wide,) = measurer.measure(mask, prob)
    (core,) = measurer.measure(mask, prob, width_threshold=0.9)
    assert wide.width_mean_px == pytest.approx(9.0, abs=0.6)
    assert core.width_mean_px == pytest.approx(5.0, abs=0.6)
    # everything else still describes the detected crack
    assert core.length_mm == pytest.approx(wide.length_mm) and core.area_px == wide.area_px
    assert core.polyline_px == wide.polyline_px


def test_uint8_probability_maps_give_the_same_widths(measurer):
    mask, prob = painted_crack()
    as_byte = np.rint(prob * 255).astype(np.uint8)
    (a,) = measurer.measure(mask, prob, width_threshold=0.9)
    (b,) = measurer.measure(mask, as_byte, width_threshold=0.9)
    assert a.width_mean_px == b.width_mean_px and a.width_max_px == b.width_max_px
    assert b.confidence == pytest.approx(a.confidence, abs=1 / 255)


def test_a_crack_without_a_confident_pixel_keeps_its_mask_width(measurer):
    mask, prob = painted_crack()
    faint = np.where(prob > 0, 0.5, 0.0).astype(np.float32)
    (crack,) = measurer.measure(mask, faint, width_threshold=0.9)
    assert crack.width_mean_px == pytest.approx(9.0, abs=0.6)
    with pytest.raises(ValueError, match="between 0 and 1"):
        measurer.measure(mask, prob, width_threshold=1.5)
