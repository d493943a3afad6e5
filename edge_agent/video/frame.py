"""The unit that flows through the agent: one BGR image plus when and where it was captured.

Two clocks are kept on purpose: ``capture_ts`` (UTC wall clock) is what reports carry and what GPS fixes are
matched against; ``monotonic_ts`` is what ages, rates and latencies are computed from, because the wall clock
of a vehicle computer jumps when NTP or GPS time arrives after boot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import numpy as np

from edge_agent.imageio import DEFAULT_MAX_PIXELS as MAX_FRAME_PIXELS
from edge_agent.util.timestamps import iso_utc


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One captured frame.

    ``index`` counts frames delivered by one capture run (it keeps increasing across reconnects and file
    loops, so downstream code can detect gaps). For files and folders ``position_index`` is the frame number
    in the file / image number in the sorted folder, ``position_s`` the time in the file (folder: index/fps
    when a rate is set), ``path`` the image file (folders only) and ``loop`` how many times the source has
    wrapped around. ``odometer_m`` places the frame along the drive (from the coverage selector).
    """

    image: np.ndarray
    index: int
    capture_ts: float
    monotonic_ts: float
    source: str
    position_s: float | None = None
    position_index: int | None = None
    path: str | None = None
    loop: int = 0
    odometer_m: float | None = None  # metres driven since the first frame, when the speed is known

    @property
    def capture_time(self) -> datetime:
        """``capture_ts`` as a timezone-aware UTC datetime."""
        return datetime.fromtimestamp(self.capture_ts, tz=timezone.utc)

    @property
    def capture_iso(self) -> str:
        """``capture_ts`` as ISO-8601 UTC, e.g. ``2024-05-01T09:30:12.345Z``."""
        return iso_utc(self.capture_ts)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def age_s(self, now_monotonic: float) -> float:
        """Seconds since capture, on the monotonic clock (pass ``time.monotonic()``)."""
        return now_monotonic - self.monotonic_ts


EndReason = Literal["ended", "failed", "stopped"]


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Queued after the last frame so the pipeline can finish: the source ended, failed for good, or the
    capture was stopped. ``error`` says why when it failed."""

    reason: EndReason
    error: str | None = None


def frame_problem(image: object, max_pixels: int = MAX_FRAME_PIXELS) -> str | None:
    """Why ``image`` is not a usable BGR frame, or None when it is.

    Backends return None, empty arrays, grey or 4-channel images on glitches; those are counted as corrupt
    and skipped rather than handed to the model, which expects HxWx3 uint8.
    """
    if image is None:
        return "no image"
    if not isinstance(image, np.ndarray):
        return f"not an array ({type(image).__name__})"
    if image.dtype != np.uint8:
        return f"dtype {image.dtype}, expected uint8"
    if image.ndim != 3 or image.shape[2] != 3:
        return f"shape {image.shape}, expected HxWx3"
    if image.shape[0] == 0 or image.shape[1] == 0:
        return "empty image"
    if image.shape[0] * image.shape[1] > max_pixels:
        return f"{image.shape[1]}x{image.shape[0]} is more than {max_pixels / 1e6:.0f} Mpx (camera.max_pixels)"
    return None
