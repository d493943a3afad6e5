"""Small thread-safe counters: rolling rates and latency percentiles for health reports."""

from __future__ import annotations

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

    def mark(self, n: int = 1) -> None:
        now = time.monotonic()
        with self._lock:
            self.total += n
            for _ in range(n):
                self._events.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0] > self.window_s:
            self._events.popleft()

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
