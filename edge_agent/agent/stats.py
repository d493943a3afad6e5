"""Counters of the running pipeline, shared by the stages, health reports and /metrics."""

from __future__ import annotations

import threading
import time

from edge_agent.stats.rates import LatencyHistogram, LatencyWindow, RateMeter


class PipelineStats:
    """Thread-safe tallies; each stage owns the counters it increments."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_mono = time.monotonic()
        self.frames_in = RateMeter()          # frames taken from the capture queue
        self.frames_out = RateMeter()         # frames fully reported (measured and queued for MQTT)
        self.inference_ms = LatencyWindow()
        self.measure_ms = LatencyWindow()
        self.inference_hist = LatencyHistogram()
        self.measure_hist = LatencyHistogram()
        self.counts = {"frames_paused": 0, "frame_errors": 0, "inference_errors": 0, "report_errors": 0,
                       "detection_messages": 0, "cracks_reported": 0, "new_cracks": 0, "snapshots": 0}
        self.consecutive_inference_errors = 0
        self.last_processed_mono: float | None = None
        self.first_frame_s: float | None = None  # process start -> first processed frame

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def inference_ok(self, ms: float) -> None:
        self.inference_ms.add(ms)
        self.inference_hist.add(ms)
        with self._lock:
            self.consecutive_inference_errors = 0
            self.last_processed_mono = time.monotonic()

    def inference_failed(self) -> int:
        with self._lock:
            self.counts["inference_errors"] += 1
            self.consecutive_inference_errors += 1
            return self.consecutive_inference_errors

    def snapshot(self) -> dict:
        p50, p95 = self.inference_ms.percentiles(50, 95)
        m50, m95 = self.measure_ms.percentiles(50, 95)
        with self._lock:
            counts = dict(self.counts)
            last = self.last_processed_mono
        return {
            "frames_in": self.frames_in.total, "frames_processed": self.frames_out.total,
            "fps_in": round(self.frames_in.rate(), 2), "fps_out": round(self.frames_out.rate(), 2),
            "inference_ms_p50": p50, "inference_ms_p95": p95, "measure_ms_p50": m50, "measure_ms_p95": m95,
            "heartbeat_age_s": None if last is None else round(time.monotonic() - last, 3),
            "uptime_s": round(time.monotonic() - self.started_mono, 1), **counts,
        }

    def measured(self, ms: float) -> None:
        """One frame measured and handed to the communicator, in ``ms``."""
        self.measure_ms.add(ms)
        self.measure_hist.add(ms)
