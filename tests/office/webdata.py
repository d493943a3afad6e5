"""A filled office database for the web page's tests, written through the office's own ingest code.

Two vehicles survey one road (a straight and then a 40 m radius bend) in opposite passes with their
own GNSS bias, so the inventory merges passes; the first sends a retained ``online`` status, a
health report and snapshots (real JPEGs, as the agent sends them over MQTT 5), the second's last
will says ``offline``. Every payload is a realistic v2 message (``office.synthetic``, checked
against the JSON Schemas in test_messages.py) or built by the agent's own envelope code.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import cv2
import numpy as np

from office.ingest.rows import Incoming
from office.ingest.writer import BatchWriter
from office.refresh import refresh
from office.store.database import Database
from office.synthetic import ArcTrack, Drive, StraightTrack, cracks_along, encode, simulate
from tests.office.fleet import ORIGIN, envelope_message, side_traffic

SNAPSHOT_SIZE = (320, 180)


def snapshot_jpeg(label: str) -> bytes:
    """A road-grey picture with a dark crack line and a label: decodable, a known size."""
    w, h = SNAPSHOT_SIZE
    img = np.full((h, w, 3), 92, np.uint8)
    cv2.line(img, (40, 150), (280, 30), (25, 25, 25), 3)
    cv2.putText(img, label, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf.tobytes())


def _incoming(topic: str, payload: bytes, now: datetime, *, retain: bool = False, props: dict[str, str] | None = None,
              content_type: str | None = None) -> Incoming:
    return Incoming(topic, payload, 1, 1, retain, now, 0, props or {}, content_type)


def fill(db_url: str) -> dict[str, Any]:
    """Fill ``db_url`` and bring the inventory up to date; returns what was sent, for the asserts."""
    db = Database.open(db_url)
    writer = BatchWriter(db, "web-test")
    now = datetime.now(timezone.utc)
    start = now - timedelta(minutes=30)
    straight = StraightTrack(heading_deg=75.0, length_m=60.0)
    end_e, end_n, _ = straight.pose(straight.length_m)
    tracks = [straight, ArcTrack(radius_m=40.0, start_heading_deg=75.0, length_m=40.0, start_e=end_e, start_n=end_n)]
    sent: dict[str, Any] = {"detections": 0, "snapshots": []}
    next_seq = {"van-1": 1, "van-2": 1}
    for t_index, track in enumerate(tracks):
        cracks = cracks_along(track, ORIGIN, 4.0, seed=7 + t_index, prefix=f"t{t_index}c")
        for d_index, (device, bias) in enumerate((("van-1", (0.2, -0.1)), ("van-2", (-0.3, 0.2)))):
            drive = Drive(device, track, ORIGIN, start=start + timedelta(minutes=10 * t_index + 3 * d_index),
                          gps_bias_m=bias, gps_jitter_m=0.03, seed=11 * t_index + d_index,
                          first_seq=next_seq[device], every_frame=True)
            msgs = list(simulate(drive, cracks))
            next_seq[device] += len(msgs)
            writer.write([_incoming(f"crackseg/{device}/detections", encode(m), now) for m in msgs])
            sent["detections"] += len(msgs)
            if device == "van-1":
                with_cracks = [m for m in msgs if m["cracks"]]
                for k, m in enumerate(with_cracks[:: max(1, len(with_cracks) // 4)][:4]):
                    jpeg = snapshot_jpeg(f"{device} frame {m['frame']['index']}")
                    msg_id = f"{t_index:02d}{k:02d}" + "a" * 28
                    props = {"schema_version": "2", "msg_id": msg_id, "seq": str(10 * t_index + k + 1),
                             "device_id": device, "ts": m["ts"], "sent_ts": m["ts"],
                             "frame_index": str(m["frame"]["index"]), "crack_count": str(m["crack_count"])}
                    writer.write([_incoming(f"crackseg/{device}/snapshots", jpeg, now, props=props,
                                            content_type="image/jpeg")])
                    sent["snapshots"].append(jpeg)
    status, health, response = side_traffic("van-1")
    writer.write([_incoming(status.topic, status.payload, now, retain=True),
                  _incoming(health.topic, health.payload, now), _incoming(response.topic, response.payload, now)])
    will = envelope_message("van-2", 0, {"state": "offline"}, ts=time.time() - 600)
    writer.write([_incoming("crackseg/van-2/status", will, now, retain=True)])
    refresh(db, wait=True)
    db.close()
    return sent
