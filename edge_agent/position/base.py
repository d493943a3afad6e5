"""The position interface: every receiver hands out its fixes the same way.

Receivers deliver fixes on their own schedule (1-10 Hz) in a background thread. The agent asks
for the position *at a frame's capture time* (``fix_for_frame``): the provider keeps the last
seconds of fixes (``history.FixHistory``) and interpolates between the two around the frame, or
dead-reckons from the newest one when the frame is newer. Fixes are placed on this process's
monotonic clock (when they were valid, estimated from when they were *received*), not on the
receiver's or the system's UTC clock: a receiver clock or a system clock that is off must not
make a stale fix look fresh. Nothing farther than ``max_fix_age_s`` from a real fix is
reported: that is no fix. ``latest()`` is the newest fix with its age now (health, tools).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from edge_agent.errors import UserError
from edge_agent.position.fix import FixMode, FixQuality, PositionFix, no_fix
from edge_agent.position.history import FixHistory

log = logging.getLogger(__name__)

__all__ = ["Backoff", "FixMode", "FixQuality", "FrameTimes", "NoPositionProvider", "PositionError", "PositionFix",
           "PositionProvider", "PositionUnavailableError", "no_fix"]


class PositionError(UserError):
    """A position receiver that cannot be used as configured."""


class PositionUnavailableError(PositionError):
    """The receiver type needs something this machine does not have (e.g. pyserial)."""


class FrameTimes(Protocol):
    """What a provider needs of a frame (``video.Frame`` has it; position does not import video)."""

    @property
    def monotonic_ts(self) -> float: ...

    @property
    def position_s(self) -> float | None: ...


class PositionProvider:
    """Vehicle positions from one receiver. ``start()`` begins receiving (background thread
    where needed), ``fix_for_frame()`` and ``latest()`` are cheap and thread-safe, ``stop()``
    ends it. Receivers call ``publish()`` with each new fix; the base class keeps the history
    and does the ageing."""

    source = "none"

    def __init__(self, max_fix_age_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.max_fix_age_s = max_fix_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fix: PositionFix | None = None
        self._received_at: float | None = None
        self._history = FixHistory(keep_s=max(30.0, 2 * max_fix_age_s))

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
            now = self._clock()
            self._fix = fix
            self._received_at = now
            self._history.add(now, fix)

    def fix_at(self, monotonic_ts: float) -> PositionFix:
        """The position at ``monotonic_ts`` (this process's monotonic clock): see the module docstring."""
        with self._lock:
            fix = self._history.at(monotonic_ts, self.max_fix_age_s, self.source)
        return replace(fix, source=self.source)

    def fix_for_frame(self, frame: FrameTimes) -> PositionFix:
        """The vehicle position when ``frame`` was captured (live receivers: its monotonic capture time)."""
        return self.fix_at(frame.monotonic_ts)

    def capture_time(self, frame: FrameTimes) -> float | None:
        """The frame's capture time (UTC epoch seconds) when the provider knows it better than the
        frame's wall-clock stamp (a replayed recording); None: use the frame's own."""
        return None

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
