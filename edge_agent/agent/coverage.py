"""Every metre of road once: which frames are needed at the vehicle's speed, and how much was imaged.

A downward camera images a strip of road ``footprint`` metres long along the direction of
travel (frame rows along travel x ground resolution). At speed ``v`` consecutive needed frames
are ``footprint x (1 - overlap) / v`` seconds apart; frames in between show road already
imaged and are skipped *on purpose*, before they are even decoded. A stopped vehicle needs
one frame every ``stopped_interval_s`` (to stay visibly alive), nothing more.

Two counts are kept apart because they mean opposite things: frames skipped for coverage (the
road was already imaged: the agent saved work) and frames dropped for lack of CPU (the capture
queue overflowed: road may be missing). ``coverage`` says which one won: the fraction of the
driven distance that lies inside at least one processed frame.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

SpeedAt = Callable[[float], "float | None"]

KMH = 3.6
SURVEY_SPEED_KMH = 50.0  # the reference speed the bench and the summary speak of


@dataclass(frozen=True)
class CoverageSettings:
    """What the selector needs to know (from the ``coverage:`` and ``measurement:`` config)."""

    enabled: bool = True
    overlap: float = 0.1  # fraction of a frame's footprint shared with the next needed frame
    speed_mps: float | None = None  # used when the position source gives no speed
    stopped_interval_s: float = 5.0  # at (almost) zero speed, one frame this often
    gsd_along_mm: float = 1.0  # ground resolution along the travel axis
    travel_axis: str = "vertical"  # image axis along the direction of travel


def footprint_m(frame_shape: tuple[int, int], gsd_along_mm: float, travel_axis: str) -> float:
    """Metres of road along travel that one frame shows."""
    rows = frame_shape[0] if travel_axis == "vertical" else frame_shape[1]
    return rows * gsd_along_mm / 1000.0


def frames_needed_per_s(speed_mps: float, footprint: float, overlap: float) -> float:
    """Frames per second that image every metre at ``speed_mps`` with ``overlap`` between frames."""
    spacing = footprint * (1.0 - overlap)
    return speed_mps / spacing if spacing > 0 else math.inf


class FrameSelector:
    """Decides, per grabbed frame and before decoding it, whether it is needed (thread-safe).

    Called by the capture thread with each frame's timeline (media time for files, arrival
    time for cameras). It integrates speed x time into an odometer and keeps a frame when
    skipping it would leave the next one farther than the allowed spacing from the last kept
    one. Without a known speed (no fix, no configured speed) every frame is needed.
    """

    def __init__(self, settings: CoverageSettings, speed_at: SpeedAt):
        self.settings = settings
        self.speed_at = speed_at
        self._lock = threading.Lock()
        self._footprint: float | None = None
        self._last_t: float | None = None
        self._interval: float | None = None
        self._odometer = 0.0
        self._kept_at_odo: float | None = None
        self._kept_at_t: float | None = None
        self.skipped = 0
        self.speed_known = False

    def set_frame_shape(self, shape: tuple[int, int]) -> None:
        with self._lock:
            self._footprint = footprint_m(shape, self.settings.gsd_along_mm, self.settings.travel_axis)

    @property
    def footprint(self) -> float | None:
        return self._footprint

    @property
    def odometer_m(self) -> float:
        """Metres driven since the first frame (integrated over every grabbed frame, kept or not)."""
        with self._lock:
            return self._odometer

    def _speed(self, t: float) -> float | None:
        try:
            v = self.speed_at(t)
        except Exception:
            v = None
        if v is None or not math.isfinite(v) or v < 0:
            v = self.settings.speed_mps
        return v

    def accept(self, t: float) -> tuple[bool, float]:
        """(keep this frame?, odometer at this frame in metres)."""
        v = self._speed(t)
        with self._lock:
            if self._last_t is not None and t > self._last_t:
                dt = t - self._last_t
                self._interval = dt if self._interval is None else 0.8 * self._interval + 0.2 * dt
                if v is not None:
                    self._odometer += v * dt
            self._last_t = t
            self.speed_known = v is not None
            keep = self._decide(t, v)
            if keep:
                self._kept_at_odo, self._kept_at_t = self._odometer, t
            else:
                self.skipped += 1
            return keep, self._odometer

    def _decide(self, t: float, v: float | None) -> bool:
        s = self.settings
        if not s.enabled or v is None or self._footprint is None or self._kept_at_odo is None:
            return True
        assert self._kept_at_t is not None
        if t - self._kept_at_t >= s.stopped_interval_s:
            return True
        spacing = self._footprint * (1.0 - s.overlap)
        ahead = v * (self._interval or 0.0)  # where the next frame will be
        return (self._odometer - self._kept_at_odo) + ahead > spacing


class CoverageTracker:
    """Fraction of the driven distance that processed frames imaged (overall and per window).

    Processed frames at odometer positions o1 < o2 < ... each image ``footprint`` metres, so
    the imaged length up to odometer D is the sum of min(footprint, o_i - o_(i-1)) plus
    min(footprint, D - o_n); coverage is that over D - o1.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start: float | None = None
        self._last: float | None = None
        self._footprint = 0.0
        self._covered = 0.0
        self._window: tuple[float, float] | None = None  # (odometer, imaged) when the window started

    def processed(self, odometer_m: float | None, footprint: float | None) -> None:
        """A frame at ``odometer_m`` was processed (segmented and reported)."""
        if odometer_m is None or footprint is None:
            return
        with self._lock:
            self._footprint = footprint
            if self._start is None:
                self._start = self._last = odometer_m
                self._window = (odometer_m, 0.0)
                return
            assert self._last is not None
            if odometer_m > self._last:
                self._covered += min(footprint, odometer_m - self._last)
                self._last = odometer_m

    def _imaged(self, driven_to: float) -> float:
        assert self._last is not None
        return self._covered + min(self._footprint, max(0.0, driven_to - self._last))

    def coverage(self, driven_to: float) -> float | None:
        """Imaged fraction of the road from the first processed frame to odometer ``driven_to``."""
        with self._lock:
            if self._start is None or driven_to - self._start <= 1e-6:
                return None
            return min(1.0, self._imaged(driven_to) / (driven_to - self._start))

    def window(self, driven_to: float) -> float | None:
        """Coverage since the previous call (one health interval); then a new window starts."""
        with self._lock:
            if self._window is None:
                return None
            odo0, imaged0 = self._window
            imaged = self._imaged(driven_to)
            self._window = (driven_to, imaged)
            if driven_to - odo0 <= 1e-6:
                return None
            return max(0.0, min(1.0, (imaged - imaged0) / (driven_to - odo0)))


def max_speed_kmh(fps: float, footprint: float | None, overlap: float) -> float | None:
    """The highest speed at which processing ``fps`` frames per second still images every metre."""
    if footprint is None or fps <= 0:
        return None
    return fps * footprint * (1.0 - overlap) * KMH


def driven_m(selector: FrameSelector | None) -> float | None:
    """Metres driven so far (None without a known speed)."""
    return None if selector is None or not selector.speed_known else round(selector.odometer_m, 2)


def coverage_so_far(tracker: CoverageTracker, selector: FrameSelector | None, window: bool = False) -> float | None:
    """The run's coverage, or (``window``) the coverage since the previous call; None without a speed."""
    if selector is None or not selector.speed_known:
        return None
    value = tracker.window(selector.odometer_m) if window else tracker.coverage(selector.odometer_m)
    return None if value is None else round(value, 4)
