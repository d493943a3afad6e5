"""Crack measurement: from a binary mask to lengths, widths, types and severities, and stable
ids for cracks seen in consecutive frames. numpy + OpenCV only (no torch, no scikit-image)."""

from __future__ import annotations

from edge_agent.measure.classify import CrackType
from edge_agent.measure.cracks import (
    CrackMeasurement,
    CrackMeasurer,
    MaskError,
    measure_cracks,
)
from edge_agent.measure.severity import Severity, classify_severity
from edge_agent.measure.tracking import CrackTracker, Track, TrackedCrack

__all__ = ["CrackMeasurement", "CrackMeasurer", "CrackTracker", "CrackType", "MaskError", "Severity", "Track",
           "TrackedCrack", "classify_severity", "measure_cracks"]
