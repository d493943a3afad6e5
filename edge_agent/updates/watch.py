"""Watching a freshly switched model in service, and deciding when to give it up.

A model can pass its self-test and still fail on the road: a graph that only runs at the
self-test's image size, a runtime that leaks or crawls on this CPU, an execution provider
that falls over after a few frames. So for ``watch_window_s`` after a switch the pipeline's
own numbers decide:

- ``max_consecutive_inference_errors`` failed frames in a row -> roll back at once;
- processed frame rate under ``min_fps_fraction`` x the rate before the update, judged only
  after ``fps_settle_s`` (the fps meter averages over the last seconds, which at first still
  hold frames of the old model), only while nobody paused the pipeline, and only when the
  pipeline's own per-frame time explains it (a source delivering fewer frames is no model
  failure) -> roll back;
- the window passes without either -> the switch is confirmed (commit).

This module only decides; ``manager.py`` acts. Decisions take ``now`` from the caller so the
rules are testable without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["none", "watching", "commit", "rollback"]


@dataclass(frozen=True)
class WatchDecision:
    """What the manager should do now; ``reason`` is set for rollbacks (it is reported as is)."""

    action: Action
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason}


@dataclass(frozen=True)
class WatchRules:
    window_s: float
    max_consecutive_errors: int
    min_fps_fraction: float
    settle_s: float

    @classmethod
    def from_config(cls, cfg: Any) -> WatchRules:
        return cls(window_s=cfg.watch_window_s, max_consecutive_errors=cfg.max_consecutive_inference_errors,
                   min_fps_fraction=cfg.min_fps_fraction, settle_s=cfg.fps_settle_s)


def _num(snapshot: dict, key: str) -> float | None:
    v = snapshot.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class ServiceWatch:
    """The watch over one switch. ``baseline``: pipeline counters just before the switch (or None)."""

    def __init__(self, rules: WatchRules, started: float, fps_before: float | None = None,
                 baseline: dict | None = None):
        self.rules = rules
        self.started = started
        self.fps_before = fps_before if fps_before and fps_before > 0 else None
        self.baseline = dict(baseline) if baseline else None
        self.last_fps: float | None = None

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started)

    def on_inference_error(self, consecutive: int, now: float) -> WatchDecision:
        if consecutive >= self.rules.max_consecutive_errors:
            return WatchDecision("rollback", f"{consecutive} inference errors in a row within "
                                             f"{self.elapsed(now):.0f} s of the switch (limit "
                                             f"{self.rules.max_consecutive_errors})")
        return WatchDecision("watching")

    def observe(self, snapshot: dict, now: float) -> WatchDecision:
        if self.baseline is None:
            self.baseline = dict(snapshot)
        limit = self.rules.max_consecutive_errors
        consecutive = _num(snapshot, "consecutive_inference_errors")
        if consecutive is not None and consecutive >= limit:
            return self.on_inference_error(int(consecutive), now)
        errors = self._delta(snapshot, "inference_errors")
        processed = self._delta(snapshot, "frames_processed")
        if errors is not None and errors >= limit and not processed:
            return WatchDecision("rollback", f"{errors:.0f} inference errors and no frame processed since the "
                                             "switch")
        elapsed = self.elapsed(now)
        fps = _num(snapshot, "fps_out")
        self.last_fps = fps
        paused = self._delta(snapshot, "frames_paused")
        if self.fps_before and fps is not None and elapsed >= self.rules.settle_s and not paused:
            floor = self.rules.min_fps_fraction * self.fps_before
            capacity = self._capacity_fps(snapshot)
            if fps < floor and (capacity is None or capacity < floor):
                return WatchDecision("rollback", f"frame rate fell to {fps:.2f} fps, under "
                                                 f"{self.rules.min_fps_fraction:g} x the {self.fps_before:.2f} fps "
                                                 "before the update" + (f" (the pipeline now manages at most "
                                                                        f"{capacity:.2f} fps)" if capacity else ""))
        if elapsed >= self.rules.window_s:
            return WatchDecision("commit")
        return WatchDecision("watching")

    @staticmethod
    def _capacity_fps(snapshot: dict) -> float | None:
        """Frames/s the pipeline could process now: its slower stage's median time per frame.

        Fewer frames *arriving* (the vehicle stops, the source ends, a camera stalls) also
        lowers the processed rate, but not this; only a slower model (or the measurement of
        its output) does. None when the snapshot has no timings.
        """
        times = [t for t in (_num(snapshot, "inference_ms_p50"), _num(snapshot, "measure_ms_p50")) if t]
        return 1000.0 / max(times) if times else None

    def _delta(self, snapshot: dict, key: str) -> float | None:
        now_v = _num(snapshot, key)
        base_v = _num(self.baseline or {}, key)
        if now_v is None:
            return None
        return now_v - (base_v or 0.0)

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"elapsed_s": round(self.elapsed(now), 1), "window_s": self.rules.window_s,
                "fps_before": self.fps_before, "fps_now": self.last_fps}
