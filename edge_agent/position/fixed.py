"""A position that never changes: a test rig, a parked vehicle, a camera on a pole."""

from __future__ import annotations

from edge_agent.config.position import FixedPositionConfig
from edge_agent.position.base import PositionFix, PositionProvider


class FixedPositionProvider(PositionProvider):
    """Always the configured position, with quality 'manual' and age 0 (it is never stale)."""

    source = "fixed"

    def __init__(self, lat: float, lon: float, alt_m: float | None = None, heading_deg: float | None = None,
                 speed_mps: float | None = None):
        super().__init__(max_fix_age_s=float("inf"))
        self._fixed = PositionFix(lat=lat, lon=lon, alt_m=alt_m, speed_mps=speed_mps, heading_deg=heading_deg,
                                  fix_quality="manual", age_s=0.0, source=self.source)

    @classmethod
    def from_config(cls, config: FixedPositionConfig) -> FixedPositionProvider:
        return cls(config.lat, config.lon, config.alt_m, config.heading_deg, config.speed_mps)

    def latest(self) -> PositionFix:
        return self._fixed

    def fix_at(self, monotonic_ts: float) -> PositionFix:
        return self._fixed
