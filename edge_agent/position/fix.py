"""One vehicle position (``PositionFix``): what every receiver produces and every message carries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from edge_agent.util.timestamps import iso_utc

FixQuality = Literal["none", "gps", "dgps", "rtk_fixed", "rtk_float", "estimated", "manual", "simulated"]
FixMode = Literal["none", "2d", "3d"]


@dataclass(frozen=True)
class PositionFix:
    """The vehicle position at one moment; all fields None and quality 'none' when there is no fix.

    ``fix_quality`` says how the receiver solved it (plain GNSS, differential, RTK, dead
    reckoning, ...); ``fix_mode`` whether it is 2D or 3D when the receiver tells. ``fix_time``
    is the receiver's UTC time of the fix when known. ``heading_deg`` is the course over ground
    (degrees clockwise from true north). ``age_s``: for ``latest()`` the seconds since this
    process received the fix; for a fix at a frame's capture time how far in time it was
    projected from the nearest real fix (0 on a fix). For a stale fix reported as none: how
    old the last fix is.
    """

    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None
    fix_quality: FixQuality = "none"
    fix_mode: FixMode | None = None
    satellites: int | None = None
    fix_time: datetime | None = None
    age_s: float | None = None
    source: str = "none"

    @property
    def has_fix(self) -> bool:
        return self.fix_quality != "none" and self.lat is not None and self.lon is not None

    def to_dict(self) -> dict:
        """JSON-ready; coordinates to 1e-7 degrees (~1 cm), the resolution receivers report."""

        def r(value: float | None, digits: int) -> float | None:
            return None if value is None else round(value, digits)

        heading = r(self.heading_deg, 1)
        return {
            "lat": r(self.lat, 7),
            "lon": r(self.lon, 7),
            "alt_m": r(self.alt_m, 2),
            "speed_mps": r(self.speed_mps, 2),
            "heading_deg": None if heading is None else heading % 360.0,  # 359.96 rounds to 0.0, not 360.0
            "fix_quality": self.fix_quality,
            "fix_mode": self.fix_mode,
            "satellites": self.satellites,
            "fix_time": iso_utc(self.fix_time) if self.fix_time else None,
            "age_s": r(self.age_s, 2),
            "source": self.source,
        }


def no_fix(source: str = "none", age_s: float | None = None) -> PositionFix:
    return PositionFix(source=source, age_s=age_s)
