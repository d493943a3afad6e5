"""Report each crack once while it crosses the frame: stable ids across consecutive frames.

At survey speed a crack stays in view for several frames, moving along the travel axis. The
tracker predicts where each known crack is now (vehicle speed x frame interval / GSD, in the
direction the road moves in the image) and matches the new cracks by overlap of the shifted
bounding boxes. Without a speed (no GPS fix) it uses the image speed it measured on earlier
matches, and with none of that, plain overlap (works when the frame rate is high for the
speed). A track ends when its predicted box has left the frame or it was not seen for a few
frames; ``pop_finished()`` hands ended tracks over with their longest sighting.

Ids are ``<run id>-<counter>``: unique per device run without coordination (the run id is
random unless the agent passes one, e.g. built from its device id and start time).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_agent.config.measurement import MeasurementConfig
from edge_agent.measure.cracks import CrackMeasurement

_MOTION_VECTORS = {"down": (0.0, 1.0), "up": (0.0, -1.0), "right": (1.0, 0.0), "left": (-1.0, 0.0)}


class TrackedCrack(NamedTuple):
    """One crack of the current frame with its track id; ``is_new`` on its first sighting."""

    crack: CrackMeasurement
    track_id: str
    is_new: bool


@dataclass
class Track:
    """A crack followed across frames. ``box`` is (x0, y0, x1, y1) where it is expected now."""

    track_id: str
    box: np.ndarray
    first_ts: float
    last_ts: float
    best: CrackMeasurement
    last: CrackMeasurement
    frames_seen: int = 1
    missed: int = 0

    def observe(self, ts: float, crack: CrackMeasurement, box: np.ndarray) -> None:
        self.box, self.last, self.last_ts = box, crack, ts
        self.frames_seen += 1
        self.missed = 0
        if crack.length_mm > self.best.length_mm:
            self.best = crack


def _box(crack: CrackMeasurement) -> np.ndarray:
    x, y, w, h = crack.bbox_px
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def _iou(a: np.ndarray, b: np.ndarray, margin: float) -> np.ndarray:
    """IoU matrix between boxes ``a`` (N, 4) and ``b`` (M, 4), each grown by ``margin``."""
    a = a + np.array([-margin, -margin, margin, margin])
    b = b + np.array([-margin, -margin, margin, margin])
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class CrackTracker:
    """Gives every crack a stable id while it stays in view.

    ``frame_shape`` (height, width) lets tracks end as soon as they leave the frame; without it
    they end after ``tracking.max_missed_frames`` frames unseen.
    """

    def __init__(self, config: MeasurementConfig | None = None, frame_shape: tuple[int, int] | None = None,
                 run_id: str | None = None):
        self.config = config or MeasurementConfig()
        self.frame_shape = tuple(frame_shape[:2]) if frame_shape is not None else None
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self._counter = 0
        self._tracks: list[Track] = []
        self._finished: list[Track] = []
        self._last_ts: float | None = None
        self._direction = np.array(_MOTION_VECTORS[self.config.image_motion])
        self.image_speed_px_s: float | None = None  # learned from matches, used when speed is unknown

    @property
    def active(self) -> list[Track]:
        return list(self._tracks)

    def _new_id(self) -> str:
        self._counter += 1
        return f"{self.run_id}-{self._counter}"

    def expected_shift_px(self, dt: float, speed_mps: float | None) -> float:
        """How far the road moved in the image along the travel direction in ``dt`` seconds."""
        if speed_mps is not None:
            return max(speed_mps, 0.0) * dt * 1000.0 / self.config.gsd_along_travel
        if self.image_speed_px_s is not None:
            return self.image_speed_px_s * dt
        return 0.0

    def update(self, frame_ts: float, cracks: Sequence[CrackMeasurement], speed_mps: float | None = None,
               frame_shape: tuple[int, int] | None = None) -> list[TrackedCrack]:
        """Match this frame's cracks to the known ones; returns them in input order with ids."""
        if frame_shape is not None:
            self.frame_shape = tuple(frame_shape[:2])
        tcfg = self.config.tracking
        if not tcfg.enabled:
            return [TrackedCrack(c, self._new_id(), True) for c in cracks]
        dt = 0.0 if self._last_ts is None else max(frame_ts - self._last_ts, 0.0)
        self._last_ts = frame_ts
        shift = self._direction * self.expected_shift_px(dt, speed_mps)
        previous = {id(t): t.box for t in self._tracks}
        for track in self._tracks:
            track.box = track.box + np.concatenate([shift, shift])
        self._expire(frame_ts)

        boxes = np.array([_box(c) for c in cracks]).reshape(-1, 4)
        assigned: dict[int, Track] = {}
        if self._tracks and len(cracks):
            iou = _iou(np.array([t.box for t in self._tracks]), boxes, float(tcfg.margin_px))
            pairs = np.argwhere(iou >= tcfg.min_iou)
            order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
            used_tracks: set[int] = set()
            for ti, ci in pairs[order].tolist():
                if ti in used_tracks or ci in assigned:
                    continue
                used_tracks.add(ti)
                assigned[ci] = self._tracks[ti]

        moved = []
        out = []
        for ci, crack in enumerate(cracks):
            found = assigned.get(ci)
            if found is None:
                track = Track(self._new_id(), boxes[ci], frame_ts, frame_ts, crack, crack)
                self._tracks.append(track)
                out.append(TrackedCrack(crack, track.track_id, True))
                continue
            track = found
            if dt > 0 and not self._touches_border(boxes[ci]) and not self._touches_border(previous[id(track)]):
                centre_then = previous[id(track)].reshape(2, 2).mean(axis=0)
                centre_now = boxes[ci].reshape(2, 2).mean(axis=0)
                moved.append(float(np.dot(centre_now - centre_then, self._direction)) / dt)
            track.observe(frame_ts, crack, boxes[ci])
            out.append(TrackedCrack(crack, track.track_id, False))
        if moved:
            measured = float(np.median(moved))
            self.image_speed_px_s = measured if self.image_speed_px_s is None else (
                0.5 * self.image_speed_px_s + 0.5 * measured)
        for track in self._tracks:
            if track.last_ts != frame_ts:
                track.missed += 1
        return out

    def _touches_border(self, box: np.ndarray) -> bool:
        """A box cut by the frame edge moves with the crack only on its far side: not for speed."""
        if self.frame_shape is None:
            return False
        h, w = self.frame_shape
        return box[0] <= 0 or box[1] <= 0 or box[2] >= w or box[3] >= h

    def _expire(self, now: float) -> None:
        tcfg = self.config.tracking
        keep: list[Track] = []
        for track in self._tracks:
            gone = track.missed > tcfg.max_missed_frames or now - track.last_ts > tcfg.max_gap_s
            if self.frame_shape is not None:
                h, w = self.frame_shape
                x0, y0, x1, y1 = track.box
                gone = gone or x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h
            (self._finished if gone else keep).append(track)
        self._tracks = keep

    def pop_finished(self) -> list[Track]:
        """Tracks that ended since the last call (each with its longest sighting in ``best``)."""
        done, self._finished = self._finished, []
        return done

    def flush(self) -> list[Track]:
        """End every track (end of the stream) and return all unfinished and finished ones."""
        self._finished.extend(self._tracks)
        self._tracks = []
        return self.pop_finished()
