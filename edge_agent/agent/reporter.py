"""From a segmented frame to a detections message (and now and then a snapshot).

Runs on the report stage's thread: measurement, position, tracking and message building
happen here, off the inference thread, so they overlap with the next frame's inference.

The message is schema_version 2 (docs/mqtt.md): ``position`` is the antenna's position at the
frame's capture time (``PositionProvider.fix_for_frame``), and ``camera`` says how the image
lies on the road relative to the antenna, so the office can place every crack on the map.
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
from edge_agent.imageio import annotate_cracks, overlay_mask
from edge_agent.measure import CrackMeasurer, CrackTracker
from edge_agent.measure.tracking import TrackedCrack
from edge_agent.position import PositionProvider

log = logging.getLogger(__name__)

MODEL_FIELDS = ("name", "version", "backend", "precision", "threshold")
# the image direction that points ahead is the opposite of where the road moves while driving forward
FORWARD_OF_MOTION = {"down": "up", "up": "down", "left": "right", "right": "left"}


def camera_block(measurement: MeasurementConfig) -> dict:
    """The v2 ``camera`` object: ground resolution, which image direction is ahead, mount offsets."""
    return {"gsd_x_mm_per_px": measurement.gsd_x, "gsd_y_mm_per_px": measurement.gsd_y,
            "forward": FORWARD_OF_MOTION[measurement.image_motion],
            "offset_forward_m": measurement.mount.offset_forward_m,
            "offset_right_m": measurement.mount.offset_right_m}


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
            measurer, tracker, reporting, measurement = self.measurer, self.tracker, self.reporting, self.measurement
        assert measurement is not None
        frame = item.frame
        cracks = measurer.measure(item.mask, item.prob, item.width_threshold) if item.mask.any() else []
        fix = self.position.fix_for_frame(frame)
        # a replayed recording knows when the frame was really taken; live frames carry it
        captured = self.position.capture_time(frame)
        ts = frame.capture_ts if captured is None else captured
        # Recorded media may play faster than real time: track on media time so the
        # speed-based motion estimate matches what the camera saw.
        track_ts = frame.position_s if frame.position_s is not None else frame.capture_ts
        tracked = tracker.update(track_ts, cracks, fix.speed_mps if fix.has_fix else None,
                                 frame_shape=item.mask.shape)
        if tracked or reporting.every_frame:
            listed = tracked[:reporting.max_cracks_per_message]
            new_count = sum(1 for t in tracked if t.is_new)
            payload = {
                "frame": {"index": frame.index, "width": frame.width, "height": frame.height,
                          "source": frame.source, "position_s": frame.position_s},
                "camera": camera_block(measurement),
                "model": {k: item.model.get(k) for k in MODEL_FIELDS},
                "inference_ms": round(item.inference_ms, 2),
                "position": fix.to_dict(),
                "crack_count": len(tracked),
                "new_crack_count": new_count,
                "crack_pixel_fraction": round(float(item.mask.mean()), 6),
                "cracks": [{"track_id": t.track_id, "first_sighting": t.is_new, **t.crack.to_dict()}
                           for t in listed],
                "cracks_omitted": len(tracked) - len(listed),
            }
            self.comms.publish_detection(payload, ts=ts)
            self.stats.add("detection_messages")
            self.stats.add("cracks_reported", len(tracked))
            self.stats.add("new_cracks", new_count)
        self._maybe_snapshot(item, tracked, reporting, ts, measurement)

    def _maybe_snapshot(self, item: Segmented, tracked: list[TrackedCrack], reporting: ReportingConfig, ts: float,
                        measurement: MeasurementConfig) -> None:
        crack_count = len(tracked)
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
        labels = []
        for t in tracked:
            c = t.crack  # only what the label shows (to_dict() would also build the polyline)
            severity = c.severity.value
            label = crack_label(t.track_id, {"type": c.crack_type.value, "width_mean_mm": round(c.width_mean_mm, 1),
                                             "severity": severity})
            labels.append((label, tuple(int(v) for v in c.bbox_px), severity))
        jpeg = encode_snapshot(item.frame.image, item.mask, cfg.max_width, cfg.jpeg_quality, labels,
                               (measurement.gsd_x + measurement.gsd_y) / 2)
        if self.comms.publish_snapshot(jpeg, ts, frame_index=item.frame.index,
                                       crack_count=crack_count):
            self.stats.add("snapshots")


def crack_label(track_id: str, crack: dict) -> str:
    """``#12 transverse 4.1 mm low``: the track number (the id's last part), type, mean width, severity."""
    return f"#{track_id.rsplit('-', 1)[-1]} {crack['type']} {crack['width_mean_mm']:.1f} mm {crack['severity']}"


def encode_snapshot(image: np.ndarray, mask: np.ndarray, max_width: int, quality: int,
                    labels: list[tuple[str, tuple[int, ...], str]] | None = None,
                    mm_per_px: float | None = None) -> bytes:
    """The frame with cracks drawn over it, downscaled to ``max_width``, as JPEG bytes; with
    ``labels`` ((text, bbox, severity) per crack) each crack is boxed and labelled, and with
    ``mm_per_px`` a scale bar is drawn (both after downscaling, so the text stays readable)."""
    picture = overlay_mask(image, mask)
    h, w = picture.shape[:2]
    factor = 1.0
    if w > max_width:
        factor = max_width / w
        picture = cv2.resize(picture, (max_width, max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    if labels is not None or mm_per_px:
        boxes = [(text, (round(b[0] * factor), round(b[1] * factor), max(1, round(b[2] * factor)),
                         max(1, round(b[3] * factor))), sev) for text, b, sev in labels or []]
        picture = annotate_cracks(picture, boxes, mm_per_px / factor if mm_per_px else None)
    ok, buf = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding of a snapshot failed")
    return buf.tobytes()
