"""Detections schema_version 2 (/tmp/plan/payload-v2.md, docs/mqtt.md): the ``camera`` block from the
config, the position at the frame's capture time, the capture time of a replayed recording, the mount
section's bounds, and labelled snapshots."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.agent.pipeline import Segmented
from edge_agent.agent.reporter import Reporter, camera_block, crack_label, encode_snapshot
from edge_agent.agent.stats import PipelineStats
from edge_agent.comms.envelope import SCHEMA_VERSION, wrap
from edge_agent.config.loader import load_config
from edge_agent.config.measurement import MeasurementConfig
from edge_agent.config.reporting import ReportingConfig
from edge_agent.errors import UserError
from edge_agent.imageio import annotate_cracks, draw_scale_bar
from edge_agent.position import PositionFix, PositionProvider
from edge_agent.position.history import enu_to_latlon, latlon_to_enu
from edge_agent.video.frame import Frame
from tests.schemas import validate_message

LAT0, LON0 = 52.52, 13.405
MODEL = {"name": "crackseg-ref", "version": "1.0.0", "backend": "onnx", "precision": "int8", "threshold": 0.2}


class RecordingComms:
    """The communicator interface, recording what would be sent (enveloped like the real one)."""

    def __init__(self) -> None:
        self.detections: list[dict[str, Any]] = []
        self.snapshots: list[tuple[bytes, float]] = []
        self.seq = 0

    def publish_detection(self, payload: dict, ts: float) -> bool:
        self.seq += 1
        self.detections.append(wrap(payload, device_id="van-1", seq=self.seq, ts=ts, sent_ts=time.time()))
        return True

    def publish_snapshot(self, jpeg: bytes, ts: float, **fields: Any) -> bool:
        self.snapshots.append((jpeg, ts))
        return True


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def segmented(mono: float, position_s: float | None = None, size: tuple[int, int] = (320, 240)) -> Segmented:
    w, h = size
    image = np.full((h, w, 3), 110, np.uint8)
    mask = np.zeros((h, w), bool)
    cv2.line(image, (40, 120), (280, 126), (30, 30, 30), 4)
    mask[118:129, 40:281] = cv2.line(np.zeros((h, w), np.uint8), (40, 120), (280, 126), 1, 4)[118:129, 40:281] > 0
    frame = Frame(image=image, index=7, capture_ts=time.time(), monotonic_ts=mono, source="test", position_s=position_s)
    return Segmented(frame, mask.astype(np.float32), mask, 12.5, dict(MODEL))


def reporter(position: PositionProvider, measurement: MeasurementConfig | None = None,
             reporting: ReportingConfig | None = None) -> tuple[Reporter, RecordingComms]:
    comms = RecordingComms()
    rep = Reporter(comms, position, measurement or MeasurementConfig(gsd_mm_per_px=2.0),  # type: ignore[arg-type]
                   reporting or ReportingConfig(), PipelineStats(), run_id="van-1-run")
    return rep, comms


@pytest.mark.parametrize(("motion", "axis", "forward"), [("down", "vertical", "up"), ("up", "vertical", "down"),
                                                        ("right", "horizontal", "left"),
                                                        ("left", "horizontal", "right")])
def test_camera_block_comes_from_the_config(motion, axis, forward):
    m = MeasurementConfig.model_validate({"gsd_mm_per_px": 1.6, "gsd_y_mm_per_px": 1.7, "travel_axis": axis,
                                          "tracking": {"image_motion": motion},
                                          "mount": {"offset_forward_m": 1.5, "offset_right_m": -0.25}})
    assert camera_block(m) == {"gsd_x_mm_per_px": 1.6, "gsd_y_mm_per_px": 1.7, "forward": forward,
                               "offset_forward_m": 1.5, "offset_right_m": -0.25}


def test_defaults_are_forward_up_and_no_offset():
    block = camera_block(MeasurementConfig())
    assert block["forward"] == "up" and block["offset_forward_m"] == 0.0 and block["offset_right_m"] == 0.0
    assert camera_block(MeasurementConfig(travel_axis="horizontal"))["forward"] == "left"


def test_message_is_v2_schema_valid_and_positioned_at_capture_time():
    """Fixes at 1 Hz while driving north at 14 m/s; the frame was captured 0.3 s after the first one
    and is reported after the second arrived: its position is 4.2 m on, not the latest fix."""
    clock = Clock()
    gps = PositionProvider(max_fix_age_s=3.0, clock=clock)
    for k in range(2):
        lat, lon = enu_to_latlon(LAT0, LON0, 0.0, 14.0 * k)
        gps.publish(PositionFix(lat=lat, lon=lon, speed_mps=14.0, heading_deg=0.0, fix_quality="gps"))
        clock.t += 1.0
    rep, comms = reporter(gps)
    rep(segmented(mono=100.3))
    (msg,) = comms.detections
    validate_message("crackseg/van-1/detections", msg)
    assert msg["schema_version"] == SCHEMA_VERSION == 2
    assert msg["camera"] == {"gsd_x_mm_per_px": 2.0, "gsd_y_mm_per_px": 2.0, "forward": "up",
                             "offset_forward_m": 0.0, "offset_right_m": 0.0}
    pos = msg["position"]
    east, north = latlon_to_enu(LAT0, LON0, pos["lat"], pos["lon"])
    assert abs(east) < 0.02 and north == pytest.approx(4.2, abs=0.02)
    assert pos["heading_deg"] == 0.0 and pos["speed_mps"] == 14.0 and pos["age_s"] == pytest.approx(0.3)
    (crack,) = msg["cracks"]
    assert crack["type"] == "transverse" and crack["polyline_px"][0][0] <= 42


def test_without_heading_or_fix_the_message_still_validates():
    rep, comms = reporter(PositionProvider())
    rep(segmented(mono=5.0))
    validate_message("crackseg/van-1/detections", comms.detections[0])
    assert comms.detections[0]["position"]["lat"] is None and "camera" in comms.detections[0]


class Replay(PositionProvider):
    """A provider that knows when each frame was taken (what nmea-file does)."""

    start = datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc).timestamp()

    def fix_for_frame(self, frame):  # noqa: ANN001
        return PositionFix(lat=LAT0, lon=LON0, speed_mps=5.0, heading_deg=90.0, fix_quality="gps", age_s=0.0)

    def capture_time(self, frame):  # noqa: ANN001
        return self.start + frame.position_s


def test_a_replayed_recording_reports_its_own_capture_time():
    reporting = ReportingConfig.model_validate({"snapshots": {"enabled": True, "min_interval_s": 0}})
    rep, comms = reporter(Replay(), reporting=reporting)
    rep(segmented(mono=5.0, position_s=12.5))
    assert comms.detections[0]["ts"] == "2024-05-01T09:30:12.500Z"
    assert comms.snapshots[0][1] == Replay.start + 12.5  # the snapshot carries the same time: the office pairs them


def test_snapshots_are_labelled_with_a_scale_bar():
    reporting = ReportingConfig.model_validate({"snapshots": {"enabled": True, "min_interval_s": 0}})
    rep, comms = reporter(Replay(), reporting=reporting)
    item = segmented(mono=5.0, position_s=1.0)
    rep(item)
    jpeg = cv2.imdecode(np.frombuffer(comms.snapshots[0][0], np.uint8), cv2.IMREAD_COLOR)
    plain = cv2.imdecode(np.frombuffer(encode_snapshot(item.frame.image, item.mask, 960, 80), np.uint8),
                         cv2.IMREAD_COLOR)
    assert jpeg.shape == plain.shape
    changed = np.abs(jpeg.astype(int) - plain.astype(int)).max(axis=2) > 60
    assert changed[95:118, 30:300].any()          # the label above the crack's box
    assert changed[215:240, 0:120].any()          # the scale bar at the bottom left
    label = crack_label("van-1-run-3", comms.detections[0]["cracks"][0])
    assert label.startswith("#3 transverse ") and label.endswith(" mm low")


def test_scale_bar_has_a_round_length():
    for width, mm_per_px, expect in ((480, 2.5, "200 mm"), (1920, 1.0, "200 mm"), (640, 0.5, "50 mm")):
        img = np.zeros((200, width, 3), np.uint8)
        draw_scale_bar(img, mm_per_px)
        assert img[180:200, :].any()
        target = width / 5 * mm_per_px
        assert int(expect.split()[0]) <= target
    out = annotate_cracks(np.zeros((100, 200, 3), np.uint8), [("#1 transverse 4.0 mm low", (10, 5, 50, 10), "low")])
    assert out.any()  # labels at the top edge go below the box instead of off the image


@pytest.mark.parametrize(("mount", "match"), [({"offset_forward_m": 80}, "less than or equal"),
                                              ({"offset_right_m": float("nan")}, "finite"),
                                              ({"offset_up_m": 1.0}, "unknown key")])
def test_mount_section_bounds(tmp_path, mount, match):
    with pytest.raises(UserError, match=match):
        load_config(None, {"camera.source": str(tmp_path), "measurement": {"mount": mount}})
    ok = load_config(None, {"camera.source": str(tmp_path),
                            "measurement": {"mount": {"offset_forward_m": -2.5, "offset_right_m": 0.4}}})
    assert ok.measurement.mount.offset_forward_m == -2.5
