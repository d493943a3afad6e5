"""Severity level from crack width (ASTM D6433 asphalt thresholds by default).

D6433 rates longitudinal and transverse cracking by mean crack width: low below 10 mm, medium
from 10 mm to 75 mm, high above 75 mm. A segmentation mask cannot see what the standard
additionally uses for some distresses (sealant condition, spalling and pumping for alligator
cracking), so the width rule is applied to every type and the thresholds are configurable.
"""

from __future__ import annotations

from enum import Enum

from edge_agent.config.measurement import SeverityConfig


class Severity(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


def classify_severity(width_mm: float, config: SeverityConfig | None = None) -> Severity:
    """Low below ``low_below_mm``, high above ``high_above_mm``, medium in between, both
    boundaries included in medium (10 mm and 75 mm are medium by default)."""
    config = config or SeverityConfig()
    if width_mm < config.low_below_mm:
        return Severity.LOW
    if width_mm > config.high_above_mm:
        return Severity.HIGH
    return Severity.MEDIUM
