"""The position interface: every receiver hands out its latest fix the same way.

Receivers deliver fixes on their own schedule (1-10 Hz) in a background thread; the agent asks
for the latest one whenever a frame is reported. The fix age is computed at read time from the
monotonic clock of this process (when the fix was *received*), not from the receiver's UTC
time: a receiver clock or a system clock that is off must not make a stale fix look fresh.
A fix older than ``max_fix_age_s`` is reported as no fix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from edge_agent.errors import UserError

log = logging.getLogger(__name__)

FixQuality = Literal["none", "gps", "dgps", "rtk_fixed", "rtk_float", "estimated", "manual", "simulated"]
FixMode = Literal["none", "2d", "3d"]


class PositionError(UserError):
    """A position receiver that cannot be used as configured."""


class PositionUnavailableError(PositionError):
    """The receiver type needs something this machine does not have (e.g. pyserial)."""


@dataclass(frozen=True)
class PositionFix:
    """The vehicle position at one moment; all fields None and quality 'none' when there is no fix.

    ``fix_quality`` says how the receiver solved it (plain GNSS, differential, RTK, dead
    reckoning, ...); ``fix_mode`` whether it is 2D or 3D when the receiver tells. ``fix_time``
    is the receiver's UTC time of the fix when known; ``age_s`` the seconds since this process
    received it (for a stale fix that is reported as none: how old the last fix is).
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

        return {
            "lat": r(self.lat, 7),
            "lon": r(self.lon, 7),
            "alt_m": r(self.alt_m, 2),
            "speed_mps": r(self.speed_mps, 2),
            "heading_deg": r(self.heading_deg, 1),
            "fix_quality": self.fix_quality,
            "fix_mode": self.fix_mode,
            "satellites": self.satellites,
            "fix_time": self.fix_time.isoformat().replace("+00:00", "Z") if self.fix_time else None,
            "age_s": r(self.age_s, 2),
            "source": self.source,
        }


def no_fix(source: str = "none", age_s: float | None = None) -> PositionFix:
    return PositionFix(source=source, age_s=age_s)


class PositionProvider:
    """Latest vehicle position from one receiver. ``start()`` begins receiving (background
    thread where needed), ``latest()`` is cheap and thread-safe, ``stop()`` ends it.
    Receivers call ``publish()`` with each new fix; the base class does the ageing."""

    source = "none"

    def __init__(self, max_fix_age_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.max_fix_age_s = max_fix_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fix: PositionFix | None = None
        self._received_at: float | None = None

    def start(self) -> None:
        """Begin receiving. Receivers without a connection have nothing to do."""

    def stop(self) -> None:
        """Stop receiving and release the device or connection."""

    def __enter__(self) -> PositionProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish(self, fix: PositionFix | None) -> None:
        """Store the newest fix (None: the receiver reports no fix), stamped as received now."""
        with self._lock:
            self._fix = fix
            self._received_at = self._clock()

    def speed_at(self, timeline_s: float) -> float | None:
        """Speed over ground (m/s) for a frame at ``timeline_s`` (media time for recorded media,
        arrival time for cameras), or None when unknown. Live receivers answer with the latest
        fix; a replayed log answers for that moment of the recording."""
        fix = self.latest()
        return fix.speed_mps if fix.has_fix else None

    def latest(self) -> PositionFix:
        """The newest fix with its age now, or a no-fix when there is none or it is too old."""
        with self._lock:
            fix, received = self._fix, self._received_at
        if fix is None or received is None:
            return no_fix(self.source)
        age = max(0.0, self._clock() - received)
        if not fix.has_fix or age > self.max_fix_age_s:
            return no_fix(self.source, age_s=age if fix.has_fix else None)
        return replace(fix, age_s=age)


class NoPositionProvider(PositionProvider):
    """``type: none``: cracks are reported without a position."""

    source = "none"


class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``; ``reset()`` after a success."""

    def __init__(self, initial: float, maximum: float):
        self.initial, self.maximum = initial, max(initial, maximum)
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2.0, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial
