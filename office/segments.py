"""Road segments: fixed-length pieces of the driven track, shared by every later pass over the same road.

Rules (docs/office.md, "Segments"):

1. Built from the vehicle positions of detection messages (antenna position + heading), per
   vehicle in capture-time order.
2. A position lies on an existing segment when it is within ``match_m`` of the segment's line,
   between its ends, and the vehicle drives the segment's way (heading within
   ``max_heading_diff_deg``): so a second pass, by any vehicle, reuses the segments, and the
   opposite direction (the other lane) gets its own.
3. Positions on no segment extend the vehicle's open segment (or start one from its previous
   position, or from the end of the segment it just left, so segments chain); every
   ``length_m`` of track the open segment is cut and a new one begins. Consecutive positions
   more than ``max_gap_m`` or ``max_gap_s`` apart break the chain: the track between them is
   unknown. Between positions the track is a straight line (the agent only reports frames
   with cracks unless ``reporting.every_frame``, so crack-free road is bridged this way).
4. Each inventory crack belongs to the segment nearest to its midpoint (within
   ``crack_match_m``). Per segment: crack length per m2 of surveyed area (length x survey
   width; the width is ``survey_width_m`` or else the median camera footprint across the
   road of the segment's messages), length per severity, and the condition index
   (``office.condition``).

Runs under the refresh lock (``office.refresh``), incrementally: only positions not yet placed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from shapely import LineString
from shapely.ops import substring
from sqlalchemy import Connection, bindparam, select, update

from office.condition import condition_index, rating
from office.config import SegmentConfig
from office.crack_queries import CHUNK, crack_midpoints
from office.geo import FloatArray
from office.grid import GridIndex, expand, new_blocks
from office.lines import (
    LocalFrame,
    frame_for,
    heading_diff_deg,
    line_wkt,
    parse_line,
    point_on_line,
    polyline_length,
)
from office.store.database import Database

GRID_DEG = 0.0005
BLOCK_DEG = 0.01
MAX_SEGMENT_DEG = 0.01   # segments are at most 1000 m (config bound): bounds the index scan


@dataclass
class SegState:
    id: int
    coords: FloatArray              # lon/lat
    complete: bool
    dirty: bool = False
    new: bool = False               # not in the database yet (inserted by ``_write``)
    device_id: str = ""
    first_seen: datetime | None = None
    _box: tuple[float, float, float, float] | None = None
    # the frame itself, not its id(): an id can be reused by another frame once one is freed
    _xy: tuple[LocalFrame, FloatArray] | None = None

    def set_coords(self, coords: FloatArray, xy: tuple[LocalFrame, FloatArray] | None = None) -> None:
        """New line (lon/lat); ``xy``: the same line in a frame's metres, when the caller has it."""
        self.coords, self._box = coords, None
        self._xy = xy

    def bbox(self) -> tuple[float, float, float, float]:
        if self._box is None:
            self._box = (float(self.coords[:, 0].min()), float(self.coords[:, 1].min()),
                         float(self.coords[:, 0].max()), float(self.coords[:, 1].max()))
        return self._box

    def xy(self, frame: LocalFrame) -> FloatArray:
        """The line in ``frame``'s metres, cached (a segment is compared with many positions)."""
        if self._xy is None or self._xy[0] is not frame:
            self._xy = (frame, frame.to_xy(self.coords))
        return self._xy[1]


@dataclass
class Builder:
    """One vehicle's progress along its own track (persisted in ``segment_builders``)."""

    device_id: str
    open_id: int | None = None
    last_segment_id: int | None = None
    last: tuple[float, float] | None = None       # lon, lat
    last_heading: float | None = None
    last_ts: datetime | None = None
    last_unplaced_msg: int | None = None           # this run only


@dataclass
class SegmentResult:
    positions: int = 0
    created: int = 0
    touched: set[int] = field(default_factory=set)
    new_bbox: tuple[float, float, float, float] | None = None


class SegmentBuilder:
    """Places pending positions on segments, creating and cutting segments as vehicles drive."""

    def __init__(self, conn: Connection, db: Database, cfg: SegmentConfig, now: datetime):
        self.conn, self.db, self.t, self.cfg, self.now = conn, db, db.t, cfg, now
        self.states: dict[int, SegState] = {}
        self.grid = GridIndex(GRID_DEG)
        self.blocks: set[tuple[int, int]] = set()
        self.result = SegmentResult()
        self.assign: list[dict[str, Any]] = []
        self._ids = db.id_allocator(conn, db.t.segments)
        self._new_boxes: list[tuple[float, float, float, float]] = []

    # -- index ----------------------------------------------------------------------------------
    def _index(self, st: SegState) -> None:
        self.grid.add(st.id, st.bbox())

    def _unindex(self, st: SegState) -> None:
        self.grid.discard(st.id, st.bbox())

    def prefetch(self, bbox: tuple[float, float, float, float]) -> None:
        s = self.t.segments.c
        for x0, y0, x1, y1 in new_blocks(bbox, BLOCK_DEG, self.blocks):
            for sid, geom, complete in self.conn.execute(select(s.id, s.geom, s.complete).where(
                    s.min_lat <= y1, s.min_lat >= y0 - MAX_SEGMENT_DEG, s.max_lat >= y0, s.min_lon <= x1,
                    s.max_lon >= x0)):
                if sid in self.states:
                    continue
                coords = parse_line(geom)
                if coords is None:
                    continue
                st = SegState(int(sid), coords, bool(complete))
                self.states[st.id] = st
                self._index(st)

    def near(self, lon: float, lat: float, metres: float) -> list[SegState]:
        box = expand((lon, lat, lon, lat), metres)
        self.prefetch(box)
        return [self.states[i] for i in self.grid.near(box)]

    # -- placing positions ----------------------------------------------------------------------
    def _match(self, frame: LocalFrame, lon: float, lat: float, x: float, y: float,
               heading: float) -> SegState | None:
        best: tuple[float, SegState] | None = None
        box = expand((lon, lat, lon, lat), self.cfg.match_m)
        for st in self.near(lon, lat, self.cfg.match_m):
            b = st.bbox()
            if b[0] > box[2] or b[2] < box[0] or b[1] > box[3] or b[3] < box[1]:
                continue
            xy = st.xy(frame)
            dist, along, bearing = point_on_line(xy, x, y)
            if dist > self.cfg.match_m or along < -0.01 or along > polyline_length(xy) + 0.01:
                continue
            if heading_diff_deg(heading, bearing) > self.cfg.max_heading_diff_deg:
                continue
            if best is None or dist < best[0]:
                best = (dist, st)
        return best[1] if best else None

    def run(self, limit: int) -> SegmentResult:
        m = self.t.detection_messages.c
        rows = self.conn.execute(
            select(m.id, m.device_id, m.ts, m.lon, m.lat, m.heading_deg).where(m.segment_state == 0)
            .order_by(m.device_id, m.ts, m.id).limit(limit)).all()
        if not rows:
            return self.result
        by_device: dict[str, list[Any]] = {}
        for r in rows:
            by_device.setdefault(r.device_id, []).append(r)
        for device, positions in by_device.items():
            b = self._load_builder(device)
            for p in positions:
                self._place(b, p)
            self._save_builder(b)
        self._write()
        self.result.positions = len(rows)
        return self.result

    def _place(self, b: Builder, p: Any) -> None:
        lon, lat, hdg, ts = float(p.lon), float(p.lat), float(p.heading_deg) % 360.0, p.ts
        frame = frame_for(lon, lat)
        x, y = frame.to_xy(np.array([[lon, lat]]))[0]
        on = self._match(frame, lon, lat, x, y, hdg)
        if on is not None:
            self._assign(p.id, on.id)
            if b.last_ts is None or ts >= b.last_ts:
                if b.open_id is not None and on.id != b.open_id:
                    self._close(b.open_id)
                    b.open_id = None
                b.last, b.last_heading, b.last_ts, b.last_segment_id = (lon, lat), hdg, ts, on.id
                b.last_unplaced_msg = None
            return
        if b.last_ts is not None and ts < b.last_ts:
            self._assign(p.id, None)        # a late position off every known segment: nothing to extend
            return
        gap_ok = False
        if b.last is not None and b.last_ts is not None:
            lx, ly = frame.to_xy(np.array([b.last]))[0]
            gap_ok = (math.hypot(x - lx, y - ly) <= self.cfg.max_gap_m
                      and (ts - b.last_ts).total_seconds() <= self.cfg.max_gap_s)
        if gap_ok and b.open_id is not None and b.open_id == b.last_segment_id:
            seg = self.states[b.open_id]
            xy = np.vstack([seg.xy(frame), [[x, y]]])
        elif gap_ok:
            assert b.last is not None
            if b.open_id is not None:
                self._close(b.open_id)
            start = frame.to_xy(np.array([b.last]))[0]
            if b.last_segment_id is not None and b.last_segment_id in self.states:
                prev = self.states[b.last_segment_id].xy(frame)
                _, along, _ = point_on_line(prev, x, y)
                if along > polyline_length(prev):
                    start = prev[-1]        # chain on from the end of the segment just left
            xy = np.array([start, [x, y]])
            seg = self._create(b.device_id, frame.to_lonlat(xy), ts)
            if b.last_unplaced_msg is not None:
                self._assign(b.last_unplaced_msg, seg.id)
        else:
            if b.open_id is not None:
                self._close(b.open_id)
            b.open_id, b.last_segment_id = None, None
            b.last, b.last_heading, b.last_ts, b.last_unplaced_msg = (lon, lat), hdg, ts, p.id
            self._assign(p.id, None)
            return
        seg = self._extend(seg, xy, frame, b.device_id, ts)
        b.open_id = seg.id if not seg.complete else None
        b.last_segment_id = seg.id
        b.last, b.last_heading, b.last_ts, b.last_unplaced_msg = (lon, lat), hdg, ts, None
        self._assign(p.id, seg.id)

    def _extend(self, seg: SegState, xy: FloatArray, frame: LocalFrame, device: str, ts: datetime) -> SegState:
        """Give ``seg`` the track ``xy`` (metres), cutting a new segment every ``length_m``."""
        length = self.cfg.length_m
        if polyline_length(xy) < length and len(seg.coords) == len(xy) - 1:
            # the common case, one more position on the open segment: convert only the new point
            coords = np.vstack([seg.coords, frame.to_lonlat(xy[-1:])])
            self._update(seg, coords, complete=False, xy=(frame, xy))
            return seg
        while polyline_length(xy) >= length:
            line = LineString(xy)
            head = np.asarray(substring(line, 0, length).coords)
            tail = np.asarray(substring(line, length, line.length).coords)
            self._update(seg, frame.to_lonlat(head), complete=True, xy=(frame, head))
            if len(tail) < 2 or polyline_length(tail) < 1e-6:
                return seg
            seg = self._create(device, frame.to_lonlat(tail), ts)
            xy = tail
        self._update(seg, frame.to_lonlat(xy), complete=False, xy=(frame, xy))
        return seg

    def _create(self, device: str, coords: FloatArray, ts: datetime) -> SegState:
        sid = self._ids()
        st = SegState(sid, coords, False, dirty=True, new=True, device_id=device, first_seen=ts)
        self.states[sid] = st
        self._index(st)
        self.result.created += 1
        self.result.touched.add(sid)
        return st

    def _update(self, st: SegState, coords: FloatArray, *, complete: bool,
                xy: tuple[LocalFrame, FloatArray] | None = None) -> None:
        self._unindex(st)
        st.set_coords(coords, xy)
        st.complete, st.dirty = complete, True
        self._index(st)
        self.result.touched.add(st.id)

    def _close(self, sid: int) -> None:
        st = self.states.get(sid)
        if st is not None and not st.complete:
            st.complete, st.dirty = True, True
            self.result.touched.add(sid)

    def _assign(self, msg_id: int, segment_id: int | None) -> None:
        self.assign.append({"mid": msg_id, "sid": segment_id})
        if segment_id is not None:
            self.result.touched.add(segment_id)

    def _load_builder(self, device: str) -> Builder:
        sb = self.t.segment_builders.c
        row = self.conn.execute(select(sb.open_segment_id, sb.last_segment_id, sb.last_lon, sb.last_lat,
                                       sb.last_heading, sb.last_ts).where(sb.device_id == device)).first()
        if row is None:
            return Builder(device)
        b = Builder(device, row.open_segment_id, row.last_segment_id,
                    (row.last_lon, row.last_lat) if row.last_lon is not None else None, row.last_heading, row.last_ts)
        for sid in (b.open_id, b.last_segment_id):
            if sid is not None and sid not in self.states:
                lon, lat = b.last or (0.0, 0.0)
                self.prefetch(expand((lon, lat, lon, lat), self.cfg.max_gap_m + self.cfg.length_m))
        if b.open_id is not None and b.open_id not in self.states:
            b.open_id = None
        return b

    def _save_builder(self, b: Builder) -> None:
        ins = self.db.insert_upsert(self.t.segment_builders)
        values = {"device_id": b.device_id, "open_segment_id": b.open_id, "last_segment_id": b.last_segment_id,
                  "last_lon": b.last[0] if b.last else None, "last_lat": b.last[1] if b.last else None,
                  "last_heading": b.last_heading, "last_ts": b.last_ts}
        self.conn.execute(ins.on_conflict_do_update(
            index_elements=["device_id"], set_={k: ins.excluded[k] for k in values if k != "device_id"}), values)

    def _write(self) -> None:
        dirty = [st for st in self.states.values() if st.dirty]
        if dirty:
            rows = []
            for st in dirty:
                frame = frame_for(float(st.coords[0, 0]), float(st.coords[0, 1]))
                xy = frame.to_xy(st.coords)
                d = xy[-1] - xy[0]
                box = st.bbox()
                rows.append({"sid": st.id, "geom": line_wkt(st.coords), "length_m": round(polyline_length(xy), 3),
                             "heading_deg": round(math.degrees(math.atan2(d[0], d[1])) % 360.0, 1),
                             "complete": st.complete, "min_lon": box[0], "min_lat": box[1], "max_lon": box[2],
                             "max_lat": box[3], "updated_at": self.now})
                self._new_boxes.append(box)
            s = self.t.segments
            new = {st.id: st for st in dirty if st.new}
            if new:
                self.conn.execute(s.insert(), [
                    {**{k: v for k, v in r.items() if k != "sid"}, "id": r["sid"],
                     "device_id": new[r["sid"]].device_id, "first_seen": new[r["sid"]].first_seen,
                     "last_seen": new[r["sid"]].first_seen, "survey_width_m": 0.0, "area_m2": 0.0}
                    for r in rows if r["sid"] in new])
            old = [r for r in rows if r["sid"] not in new]
            if old:
                self.conn.execute(update(s).where(s.c.id == bindparam("sid")).values(
                    {k: bindparam(k) for k in old[0] if k != "sid"}), old)
        m = self.t.detection_messages
        if self.assign:
            # a position placed twice in one run (first unplaced, then the start of a segment): last wins
            final: dict[int, int | None] = {}
            for a in self.assign:
                final[a["mid"]] = a["sid"]
            self.conn.execute(update(m).where(m.c.id == bindparam("mid")).values(
                segment_id=bindparam("sid"), segment_state=1), [{"mid": k, "sid": v} for k, v in final.items()])
        if self._new_boxes:
            b = np.array(self._new_boxes)
            self.result.new_bbox = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()),
                                    float(b[:, 3].max()))

    # -- cracks onto segments -------------------------------------------------------------------
    def assign_cracks(self, crack_ids: set[int]) -> set[int]:
        """Put each crack on its nearest segment; returns the segments whose crack set changed."""
        if not crack_ids:
            return set()
        c = self.t.cracks.c
        current: dict[int, int | None] = {}
        ids = sorted(crack_ids)
        for i in range(0, len(ids), CHUNK):
            for cid, sid in self.conn.execute(select(c.id, c.segment_id).where(c.id.in_(ids[i:i + CHUNK]))):
                current[int(cid)] = sid
        mids = crack_midpoints(self.conn, self.db, current)
        changes = []
        touched: set[int] = set()
        for cid, mid in mids.items():
            best: tuple[float, int] | None = None
            if mid is not None:
                frame = frame_for(*mid)
                x, y = frame.to_xy(np.array([mid]))[0]
                for st in self.near(mid[0], mid[1], self.cfg.crack_match_m):
                    d = float(LineString(st.xy(frame)).distance(LineString([(x, y), (x, y)])))
                    if d <= self.cfg.crack_match_m and (best is None or d < best[0]):
                        best = (d, st.id)
            new = best[1] if best else None
            if new != current.get(cid):
                changes.append({"cid": cid, "sid": new})
                touched |= {s for s in (new, current.get(cid)) if s is not None}
        if changes:
            self.conn.execute(update(self.t.cracks).where(c.id == bindparam("cid")).values(
                segment_id=bindparam("sid")), changes)
        return touched


def update_metrics(conn: Connection, db: Database, cfg: SegmentConfig, segment_ids: set[int], now: datetime) -> None:
    """Crack length, density, severity mix and condition index of the given segments."""
    t = db.t
    ids = sorted(segment_ids)
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        lengths: dict[int, dict[str, float]] = {sid: {"low": 0.0, "medium": 0.0, "high": 0.0} for sid in part}
        counts: dict[int, int] = dict.fromkeys(part, 0)
        for sid, sev, length in conn.execute(select(t.cracks.c.segment_id, t.cracks.c.severity, t.cracks.c.length_m)
                                             .where(t.cracks.c.segment_id.in_(part))):
            lengths[sid][sev] += float(length)
            counts[sid] += 1
        widths: dict[int, list[float]] = {sid: [] for sid in part}
        seen: dict[int, list[datetime]] = {sid: [] for sid in part}
        m = t.detection_messages.c
        for sid, width, ts in conn.execute(select(m.segment_id, m.footprint_across_m, m.ts)
                                           .where(m.segment_id.in_(part))):
            if width is not None:
                widths[sid].append(float(width))
            seen[sid].append(ts)
        rows = []
        for sid, length_m in conn.execute(select(t.segments.c.id, t.segments.c.length_m)
                                          .where(t.segments.c.id.in_(part))):
            width = cfg.survey_width_m or (statistics.median(widths[sid]) if widths[sid] else cfg.default_width_m)
            area = float(length_m) * width
            total = sum(lengths[sid].values())
            index = condition_index(lengths[sid], area)
            row = {"sid": sid, "survey_width_m": round(width, 3), "area_m2": round(area, 3),
                   "crack_count": counts[sid], "crack_length_m": round(total, 3),
                   "length_low_m": round(lengths[sid]["low"], 3), "length_medium_m": round(lengths[sid]["medium"], 3),
                   "length_high_m": round(lengths[sid]["high"], 3),
                   "crack_density_m_per_m2": round(total / area, 4) if area > 0 else 0.0,
                   "condition_index": index, "condition_class": rating(index), "updated_at": now}
            if seen[sid]:
                row["first_seen"], row["last_seen"] = min(seen[sid]), max(seen[sid])
            rows.append(row)
        for with_seen in (True, False):
            batch = [r for r in rows if ("first_seen" in r) == with_seen]
            if batch:
                s = t.segments
                conn.execute(update(s).where(s.c.id == bindparam("sid")).values(
                    {k: bindparam(k) for k in batch[0] if k != "sid"}), batch)
