"""Small thread-safe counters: rolling rates and latency percentiles for health reports."""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

import numpy as np


class RateMeter:
    """Events per second over a sliding window (default 10 s)."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._events: deque[float] = deque()
        self._lock = threading.Lock()
        self.total = 0
        self.first: float | None = None  # monotonic time of the first and the last event
        self.last: float | None = None

    def mark(self, n: int = 1) -> None:
        now = time.monotonic()
        with self._lock:
            self.total += n
            if self.first is None:
                self.first = now
            self.last = now
            for _ in range(n):
                self._events.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0] > self.window_s:
            self._events.popleft()

    def average_rate(self) -> float:
        """Events per second from the first to the last event (a run's rate, unaffected by idle tails)."""
        with self._lock:
            if self.first is None or self.last is None or self.total < 2 or self.last <= self.first:
                return 0.0
            return (self.total - 1) / (self.last - self.first)

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            if len(self._events) < 2:
                return 0.0
            span = max(now - self._events[0], 1e-6)
            return len(self._events) / max(span, min(self.window_s, span))


class LatencyWindow:
    """The last N durations (ms) with percentiles."""

    def __init__(self, size: int = 300):
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def percentiles(self, *qs: float) -> list[float | None]:
        with self._lock:
            if not self._values:
                return [None for _ in qs]
            arr = np.fromiter(self._values, dtype=np.float64)
        return [round(float(np.percentile(arr, q)), 2) for q in qs]


# Latency bucket bounds (ms): from a light 320x480 tile to a slow 1080p frame on a Pi.
LATENCY_BUCKETS_MS = (5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0, 2500.0)


class LatencyHistogram:
    """Cumulative latency counts per bucket since start (what Prometheus histograms expose).

    Why besides the percentile window: percentiles of one vehicle cannot be combined into a
    fleet's; bucket counts can be summed across vehicles and turned into fleet percentiles
    (``histogram_quantile``) by the monitoring side.
    """

    def __init__(self, bounds_ms: tuple[float, ...] = LATENCY_BUCKETS_MS):
        self.bounds_ms = tuple(sorted(bounds_ms))
        self._counts = [0] * (len(self.bounds_ms) + 1)  # the last one is +Inf
        self._sum_ms = 0.0
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        i = bisect.bisect_left(self.bounds_ms, ms)  # the first bucket whose bound is >= ms
        with self._lock:
            self._counts[i] += 1
            self._sum_ms += ms

    def snapshot(self) -> dict:
        """``{"buckets": [[upper bound in seconds or "+Inf", cumulative count], ...], "sum_s", "count"}``."""
        with self._lock:
            counts, total_ms = list(self._counts), self._sum_ms
        cumulative, running = [], 0
        for bound, n in zip([*self.bounds_ms, None], counts):
            running += n
            cumulative.append(["+Inf" if bound is None else bound / 1000.0, running])
        return {"buckets": cumulative, "sum_s": total_ms / 1000.0, "count": running}
