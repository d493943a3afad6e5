"""Checked messages -> table rows (pure: no database, no network), including geolocation.

A batch of detections is geolocated with one geodesic call (``office.geo.PolylineBatch``).
A crack is placed only when the message is schema v2 (has ``camera``) and its position has a
fix, a latitude/longitude and a heading; otherwise its observation is stored with a null line
(counted, merged by track, not on the map), as /tmp/plan/payload-v2.md requires.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import shapely

from office.geo import Camera, FloatArray, PolylineBatch
from office.messages import DetectionMessage, JsonMessage, Quarantine, SnapshotMessage
from office.store.database import dumps

GeometryFormat = Literal["wkt", "ewkb"]


@dataclass(slots=True)
class Incoming:
    """One MQTT message as the network thread handed it over (nothing parsed yet)."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    received_at: datetime
    generation: int = 0
    user_properties: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


BORDER_PX = 8   # skeleton ends (spurs pruned) stop a few pixels short of the border they cross


def clipped(polyline: list[tuple[int, int]], width: int, height: int) -> bool:
    """Does an end of the polyline touch the frame border (the crack goes on outside the frame)?"""
    if not polyline:
        return False
    return any(u < BORDER_PX or v < BORDER_PX or u >= width - BORDER_PX or v >= height - BORDER_PX
               for u, v in (polyline[0], polyline[-1]))


def placeable(msg: DetectionMessage) -> bool:
    d = msg.detection
    p = d.position
    return (d.schema_version >= 2 and d.camera is not None and p.lat is not None and p.lon is not None
            and p.heading_deg is not None and p.fix_quality != "none")


@dataclass
class DetectionRows:
    """Rows for ``detection_messages`` and, keyed by msg_id, their ``crack_observations``."""

    messages: list[dict[str, Any]]
    observations: dict[str, list[dict[str, Any]]]


def geometry_texts(lines: list[FloatArray], points: list[tuple[float, float]], fmt: GeometryFormat,
                   ) -> tuple[list[str], list[str]]:
    """Many lines and points (lon/lat) as text for the database, in one vectorised shapely call each:
    "wkt" (SQLite; 1e-8 degrees, about 1 mm) or "ewkb" (hex EWKB with SRID 4326, which PostgreSQL
    parses faster than WKT and which keeps full precision). A one-point line gets its point twice."""
    def encode(geoms: Any) -> list[str]:
        if fmt == "ewkb":
            return list(shapely.to_wkb(shapely.set_srid(geoms, 4326), hex=True, include_srid=True))
        return list(shapely.to_wkt(geoms, rounding_precision=8, trim=True))

    out_lines: list[str] = []
    if lines:
        fixed = [ln if len(ln) > 1 else np.vstack([ln, ln]) for ln in lines]
        counts = np.array([len(ln) for ln in fixed])
        out_lines = encode(shapely.linestrings(np.vstack(fixed), indices=np.repeat(np.arange(len(fixed)), counts)))
    out_points: list[str] = []
    if points:
        out_points = encode(shapely.points(np.asarray(points, dtype=np.float64)))
    return out_lines, out_points


def detection_rows(batch: list[tuple[DetectionMessage, datetime]], fmt: GeometryFormat = "wkt") -> DetectionRows:
    geo = PolylineBatch()
    with_point: list[tuple[dict[str, Any], tuple[float, float]]] = []
    pending: list[tuple[dict[str, Any], int]] = []
    messages: list[dict[str, Any]] = []
    observations: dict[str, list[dict[str, Any]]] = {}
    for msg, received_at in batch:
        d = msg.detection
        p = d.position
        cam = Camera(d.camera.gsd_x_mm_per_px, d.camera.gsd_y_mm_per_px, d.camera.forward,
                     d.camera.offset_forward_m, d.camera.offset_right_m) if d.camera is not None else None
        has_point = p.lat is not None and p.lon is not None and p.fix_quality != "none"
        messages.append({
            "msg_id": d.msg_id, "device_id": d.device_id, "seq": d.seq, "schema_version": d.schema_version,
            "ts": d.ts, "sent_ts": d.sent_ts, "received_at": received_at, "frame_index": d.frame.index,
            "frame_width": d.frame.width, "frame_height": d.frame.height, "lat": p.lat, "lon": p.lon,
            "heading_deg": p.heading_deg, "speed_mps": p.speed_mps, "fix_quality": p.fix_quality[:32],
            "footprint_across_m": cam.footprint_m(d.frame.width, d.frame.height)[0] if cam else None,
            "crack_count": d.crack_count, "cracks_omitted": d.cracks_omitted, "model_name": d.model.name[:128],
            "model_version": d.model.version[:64],
            "geom": None,
            "segment_state": 0 if has_point and p.heading_deg is not None else 1,
            "payload": msg.raw.decode("utf-8"),
        })
        if has_point and p.lon is not None and p.lat is not None:
            with_point.append((messages[-1], (p.lon, p.lat)))
        rows = []
        place = placeable(msg) and cam is not None
        for c in d.cracks:
            row = {"device_id": d.device_id, "track_id": c.track_id[:128], "ts": d.ts, "frame_index": d.frame.index,
                   "first_sighting": c.first_sighting, "type": c.type, "severity": c.severity,
                   "length_m": c.length_m, "width_mean_mm": c.width_mean_mm, "width_max_mm": c.width_max_mm,
                   "area_m2": c.area_m2, "orientation_deg": c.orientation_deg, "confidence": c.confidence,
                   "clipped": clipped(c.polyline_px, d.frame.width, d.frame.height), "geom": None}
            if place and c.polyline_px and cam is not None:
                assert p.lat is not None and p.lon is not None and p.heading_deg is not None
                handle = geo.add(c.polyline_px, d.frame.width, d.frame.height, cam, p.lat, p.lon, p.heading_deg)
                pending.append((row, handle))
            rows.append(row)
        observations[d.msg_id] = rows
    geo.solve()
    lines, points = geometry_texts([geo.result(h) for _, h in pending], [pt for _, pt in with_point], fmt)
    for (row, _), text in zip(pending, lines):
        row["geom"] = text
    for (row, _), text in zip(with_point, points):
        row["geom"] = text
    return DetectionRows(messages, observations)


def history_row(msg: JsonMessage, received_at: datetime, retained: bool) -> dict[str, Any]:
    d = msg.data
    row: dict[str, Any] = {"msg_id": d["msg_id"], "device_id": d["device_id"], "seq": d["seq"],
                           "ts": _ts(d["ts"]), "sent_ts": _ts(d["sent_ts"]), "received_at": received_at,
                           "payload": msg.raw.decode("utf-8")}
    if msg.kind == "status":
        row.update(state=d["state"], retained=retained)
    elif msg.kind == "cmd/response":
        rid = d.get("request_id")
        row.update(command=str(d.get("command"))[:128] if d.get("command") is not None else None,
                   request_id=None if rid is None else str(rid), ok=d.get("ok") if isinstance(d.get("ok"), bool)
                   else None, error=d.get("error") if isinstance(d.get("error"), str) else None)
    return row


def snapshot_row(msg: SnapshotMessage, received_at: datetime) -> dict[str, Any]:
    return {"msg_id": msg.msg_id, "device_id": msg.device_id, "seq": msg.seq, "ts": msg.ts, "sent_ts": msg.sent_ts,
            "received_at": received_at, "frame_index": msg.frame_index, "crack_count": msg.crack_count,
            "content_type": msg.content_type[:64], "size_bytes": len(msg.jpeg), "jpeg": msg.jpeg,
            "meta": dumps(msg.meta)}


def quarantine_row(item: Incoming, q: Quarantine, keep_bytes: int) -> dict[str, Any]:
    digest = hashlib.sha256(item.topic.encode("utf-8", "replace") + b"\0" + item.payload).hexdigest()

    def text(value: str | None, limit: int) -> str | None:
        return value.replace("\x00", "")[:limit] or None if value else None     # PostgreSQL text has no NUL

    return {"sha256": digest, "topic": text(item.topic, 1000) or "", "device_id": text(q.device_id, 64),
            "msg_id": text(q.msg_id, 64), "reason": text(q.reason, 1000) or "?", "size_bytes": len(item.payload),
            "payload": item.payload[:keep_bytes], "truncated": len(item.payload) > keep_bytes,
            "first_received_at": item.received_at, "last_received_at": item.received_at, "times": 1}


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
