"""Severity levels from crack width (ASTM D6433 thresholds by default)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.config.measurement import MeasurementConfig, SeverityConfig
from edge_agent.measure import Severity, classify_severity, measure_cracks


@pytest.mark.parametrize("width_mm,expected", [
    (0.0, Severity.LOW), (9.9, Severity.LOW), (9.999, Severity.LOW),
    (10.0, Severity.MEDIUM), (40.0, Severity.MEDIUM), (75.0, Severity.MEDIUM),
    (75.1, Severity.HIGH), (300.0, Severity.HIGH),
])
def test_astm_d6433_boundaries(width_mm, expected):
    assert classify_severity(width_mm) is expected
    assert classify_severity(width_mm, SeverityConfig()) is expected


def test_custom_thresholds():
    cfg = SeverityConfig(low_below_mm=3, high_above_mm=19)  # e.g. a stricter concrete policy
    assert classify_severity(2.9, cfg) is Severity.LOW
    assert classify_severity(3.0, cfg) is Severity.MEDIUM
    assert classify_severity(19.0, cfg) is Severity.MEDIUM
    assert classify_severity(19.1, cfg) is Severity.HIGH


def test_thresholds_must_be_ordered():
    with pytest.raises(ValidationError, match="must be >="):
        SeverityConfig(low_below_mm=20, high_above_mm=10)
    with pytest.raises(ValidationError):
        SeverityConfig(low_below_mm=0)
    with pytest.raises(ValidationError, match="extra"):
        SeverityConfig(medium_mm=10)


def _band(width_px: int) -> np.ndarray:
    """A horizontal crack exactly ``width_px`` wide and 600 px long."""
    m = np.zeros((720, 1280), np.uint8)
    cv2.rectangle(m, (100, 300), (699, 300 + width_px - 1), 255, -1)
    return m


@pytest.mark.parametrize("gsd,expected", [(1.0, Severity.LOW), (2.0, Severity.MEDIUM), (15.0, Severity.MEDIUM),
                                          (15.2, Severity.HIGH)])
def test_measured_crack_gets_its_severity(gsd, expected):
    crack = measure_cracks(_band(5), MeasurementConfig(gsd_mm_per_px=gsd))[0]
    assert crack.width_mean_px == pytest.approx(5.0, abs=0.05)
    assert crack.severity is expected  # 5 mm low, 10 mm medium, 75 mm medium, 76 mm high


def test_severity_agrees_with_the_reported_width():
    # 5 px x 1.9992 mm = 9.996 mm: reported as 10.0 mm, so it must not be rated "low".
    crack = measure_cracks(_band(5), MeasurementConfig(gsd_mm_per_px=1.9992))[0]
    d = crack.to_dict()
    assert d["width_mean_mm"] == 10.0
    assert d["severity"] == "medium"


def test_width_statistic_mean_or_max():
    m = np.zeros((720, 1280), np.uint8)
    cv2.rectangle(m, (100, 299), (599, 301), 255, -1)   # 3 px for 500 px
    cv2.rectangle(m, (600, 294), (699, 306), 255, -1)   # a 13 px wide spalled stretch of 100 px
    mean_cfg = MeasurementConfig(gsd_mm_per_px=2.0)
    max_cfg = MeasurementConfig(gsd_mm_per_px=2.0, severity={"width_statistic": "max"})
    by_mean = measure_cracks(m, mean_cfg)[0]
    by_max = measure_cracks(m, max_cfg)[0]
    assert by_mean.width_mean_mm < 10 <= by_max.width_max_mm
    assert by_mean.severity is Severity.LOW
    assert by_max.severity is Severity.MEDIUM
