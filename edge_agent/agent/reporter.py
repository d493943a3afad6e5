"""From a segmented frame to a detections message (and now and then a snapshot).

Runs on the report stage's thread: measurement, position, tracking and message building
happen here, off the inference thread, so they overlap with the next frame's inference.
"""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np

from edge_agent.agent.pipeline import Segmented
from edge_agent.agent.stats import PipelineStats
from edge_agent.comms.base import Communicator
from edge_agent.config.measurement import MeasurementConfig
from edge_agent.config.reporting import ReportingConfig
from edge_agent.imageio import overlay_mask
from edge_agent.measure import CrackMeasurer, CrackTracker
from edge_agent.position import PositionProvider

log = logging.getLogger(__name__)

MODEL_FIELDS = ("name", "version", "backend", "precision", "threshold")


class Reporter:
    """Builds and publishes the detections message of each frame."""

    def __init__(self, comms: Communicator, position: PositionProvider, measurement: MeasurementConfig,
                 reporting: ReportingConfig, stats: PipelineStats, run_id: str | None = None):
        self.comms, self.position, self.stats = comms, position, stats
        self.run_id = run_id
        self._lock = threading.Lock()
        self.measurement: MeasurementConfig | None = None
        self.reporting = reporting
        self.measurer = CrackMeasurer(measurement)
        self.tracker = CrackTracker(measurement, run_id=run_id)
        self.configure(measurement, reporting)
        self._snapshot_requested = threading.Event()
        self._last_snapshot_mono = -1e9

    def configure(self, measurement: MeasurementConfig, reporting: ReportingConfig) -> None:
        """Apply (new) measurement and reporting settings; safe while frames flow.

        The tracker (and with it the track ids of the cracks in view) is rebuilt only when the
        measurement settings changed: a new tracker under the same run id would reuse ids and
        report every crack in view again as new.
        """
        with self._lock:
            if self.measurement is not None and self.measurement != measurement:
                self.measurer = CrackMeasurer(measurement)
                self.tracker = CrackTracker(measurement, run_id=self.run_id)
            self.measurement, self.reporting = measurement, reporting

    def request_snapshot(self) -> None:
        self._snapshot_requested.set()

    def __call__(self, item: Segmented) -> None:
        with self._lock:
            measurer, tracker, reporting = self.measurer, self.tracker, self.reporting
        frame = item.frame
        cracks = measurer.measure(item.mask, item.prob) if item.mask.any() else []
        fix = self.position.latest()
        # Recorded media may play faster than real time: track on media time so the
        # speed-based motion estimate matches what the camera saw.
        track_ts = frame.position_s if frame.position_s is not None else frame.capture_ts
        tracked = tracker.update(track_ts, cracks, fix.speed_mps if fix.has_fix else None,
                                 frame_shape=item.mask.shape)
        if tracked or reporting.every_frame:
            listed = tracked[:reporting.max_cracks_per_message]
            payload = {
                "frame": {"index": frame.index, "width": frame.width, "height": frame.height,
                          "source": frame.source, "position_s": frame.position_s},
                "model": {k: item.model.get(k) for k in MODEL_FIELDS},
                "inference_ms": round(item.inference_ms, 2),
                "position": fix.to_dict(),
                "crack_count": len(tracked),
                "new_crack_count": sum(1 for t in tracked if t.is_new),
                "crack_pixel_fraction": round(float(item.mask.mean()), 6),
                "cracks": [{"track_id": t.track_id, "first_sighting": t.is_new, **t.crack.to_dict()}
                           for t in listed],
                "cracks_omitted": len(tracked) - len(listed),
            }
            self.comms.publish_detection(payload, ts=frame.capture_ts)
            self.stats.add("detection_messages")
            self.stats.add("cracks_reported", len(tracked))
            self.stats.add("new_cracks", sum(1 for t in tracked if t.is_new))
        self._maybe_snapshot(item, len(tracked), reporting)

    def _maybe_snapshot(self, item: Segmented, crack_count: int, reporting: ReportingConfig) -> None:
        cfg = reporting.snapshots
        forced = self._snapshot_requested.is_set()
        now = time.monotonic()
        if not forced:
            if not cfg.enabled or now - self._last_snapshot_mono < cfg.min_interval_s:
                return
            if cfg.only_with_cracks and crack_count == 0:
                return
        self._snapshot_requested.clear()
        self._last_snapshot_mono = now
        jpeg = encode_snapshot(item.frame.image, item.mask, cfg.max_width, cfg.jpeg_quality)
        if self.comms.publish_snapshot(jpeg, item.frame.capture_ts, frame_index=item.frame.index,
                                       crack_count=crack_count):
            self.stats.add("snapshots")


def encode_snapshot(image: np.ndarray, mask: np.ndarray, max_width: int, quality: int) -> bytes:
    """The frame with cracks drawn over it, downscaled to ``max_width``, as JPEG bytes."""
    picture = overlay_mask(image, mask)
    h, w = picture.shape[:2]
    if w > max_width:
        picture = cv2.resize(picture, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding of a snapshot failed")
    return buf.tobytes()
