"""Which grabbed frames get decoded: a fixed rate cap, and the hook for speed-adaptive selection.

Both decide on the frame's timeline (media time for files, arrival time for cameras) before
the frame is decoded, so a skipped frame costs a ``grab`` only.
"""

from __future__ import annotations

from typing import Protocol


class FrameSelectorLike(Protocol):
    """Decides before decoding whether a frame is needed (``edge_agent.agent.coverage.FrameSelector``)."""

    def accept(self, t: float) -> tuple[bool, float]: ...

    def set_frame_shape(self, shape: tuple[int, int]) -> None: ...


class FrameRateLimiter:
    """Keeps frames at a target rate on a timeline (media time for files, arrival time for cameras).

    A frame is kept when it is at most half a source-frame interval before the next due time, and the due
    time advances by exactly one period, so 30 -> 10 fps keeps every third frame and jitter does not make
    the rate sag. When the source is slower than the target, every frame is kept.
    """

    def __init__(self, fps: float | None):
        self.period = 1.0 / fps if fps else None
        self._due: float | None = None
        self._last_t: float | None = None
        self._interval: float | None = None

    def accept(self, t: float) -> bool:
        if self._last_t is not None and t > self._last_t:
            d = t - self._last_t
            self._interval = d if self._interval is None else 0.8 * self._interval + 0.2 * d
        self._last_t = t
        if self.period is None:
            return True
        if self._due is not None:
            tolerance = 0.5 * self._interval if self._interval else 0.0
            if t <= self._due - tolerance:
                return False
        if self._due is None or t - self._due >= self.period:
            self._due = t + self.period
        else:
            self._due += self.period
        return True
