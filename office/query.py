"""Reading the office database: the numbers, the cracks and the segments as plain dicts.

This is the layer a web page or JSON API sits on: every function takes a ``Database`` and
simple filters and returns JSON-ready values (ISO-8601 times, lon/lat coordinate lists), so
the CLI's exports and a future HTTP handler share one implementation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, func, select, text, union

from office.errors import UserError
from office.lines import parse_line
from office.store.database import Database

COORD_DIGITS = 7   # 1e-7 degrees: about 1 cm, the resolution of the input positions


@dataclass(frozen=True)
class Filter:
    """``bbox`` = (min_lon, min_lat, max_lon, max_lat): features whose extent touches it; ``since``: seen since."""

    bbox: tuple[float, float, float, float] | None = None
    since: datetime | None = None


def bbox_problem(raw: str) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """(the box, None) for ``minlon,minlat,maxlon,maxlat``, or (None, what is wrong with it)."""
    try:
        parts = [float(x) for x in raw.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or not all(math.isfinite(p) for p in parts):
        return None, "must be minlon,minlat,maxlon,maxlat (four finite numbers)"
    x0, y0, x1, y1 = parts
    if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
        return None, "need -180 <= minlon <= maxlon <= 180 and -90 <= minlat <= maxlat <= 90"
    return (x0, y0, x1, y1), None


def parse_bbox(raw: str | None) -> tuple[float, float, float, float] | None:
    if raw is None:
        return None
    box, problem = bbox_problem(raw)
    if problem:
        raise UserError(f"--bbox '{raw}': {problem}")
    return box


def parse_since(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--since '{raw}' is not an ISO-8601 date or time (e.g. 2024-05-01 or "
                        "2024-05-01T09:30:00Z)") from None
    if t.tzinfo is None:
        raise UserError(f"--since '{raw}' has no time zone; add Z for UTC (2024-05-01T00:00:00Z)")
    return t


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _coords(wkt: str | None) -> list[list[float]] | None:
    line = parse_line(wkt)
    if line is None:
        return None
    return [[round(float(x), COORD_DIGITS), round(float(y), COORD_DIGITS)] for x, y in line]


def missing_by_device(conn: Connection) -> dict[str, int]:
    """device id -> how many sequence numbers are missing (devices without a gap are absent)."""
    return {r.device_id: int(r.missing) for r in conn.execute(
        text("SELECT device_id, SUM(missing) AS missing FROM seq_gaps GROUP BY device_id"))}


def stats(db: Database, *, per_device: bool = True) -> dict[str, Any]:
    """The headline numbers (the keys of ``crackseg-office stats --json``) plus, with ``per_device``
    (the default), the per-device detail."""
    t = db.t
    with db.connect() as conn:
        def one(stmt: Any) -> int:
            return int(conn.execute(stmt).scalar() or 0)

        # one pass over the seq_gaps window query: per device when the detail is wanted, else the total
        gaps = missing_by_device(conn) if per_device else None
        devices_q = union(select(t.detection_messages.c.device_id), select(t.devices.c.device_id)).subquery()
        out: dict[str, Any] = {
            "messages": one(select(func.count()).select_from(t.detection_messages)),
            "devices": one(select(func.count()).select_from(devices_q)),
            "cracks": one(select(func.count()).select_from(t.cracks)),
            "cracks_unplaced": one(select(func.count()).select_from(t.cracks).where(t.cracks.c.geom.is_(None))),
            "segments": one(select(func.count()).select_from(t.segments)),
            "seq_gaps": (sum(gaps.values()) if gaps is not None
                         else one(text("SELECT COALESCE(SUM(missing), 0) FROM seq_gaps"))),
            "duplicates_ignored": one(select(func.coalesce(func.sum(t.ingest_counters.c.duplicates), 0))),
            "quarantined": one(select(func.count()).select_from(t.quarantine)),
            "observations": one(select(func.count()).select_from(t.crack_observations)),
            "observations_unplaced": one(select(func.count()).select_from(t.crack_observations)
                                         .where(t.crack_observations.c.geom.is_(None))),
            "observations_pending": one(select(func.count()).select_from(t.crack_observations)
                                        .where(t.crack_observations.c.crack_id.is_(None))),
            "snapshots": one(select(func.count()).select_from(t.snapshots)),
            "status_messages": one(select(func.count()).select_from(t.status_messages)),
            "health_messages": one(select(func.count()).select_from(t.health_messages)),
            "cmd_responses": one(select(func.count()).select_from(t.cmd_responses)),
            "crack_length_m": round(float(conn.execute(select(func.coalesce(func.sum(t.cracks.c.length_m), 0.0)))
                                          .scalar() or 0.0), 3),
        }
        if gaps is not None:
            out["per_device"] = _per_device(conn, t, gaps)
        q = t.quarantine.c
        out["quarantine_reasons"] = [
            {"reason": r.reason, "messages": int(r.n)} for r in conn.execute(
                select(q.reason, func.count().label("n")).group_by(q.reason).order_by(func.count().desc(), q.reason)
                .limit(10))]
    return out


def _per_device(conn: Connection, t: Any, gaps: dict[str, int]) -> list[dict[str, Any]]:
    m = t.detection_messages.c
    state = {r.device_id: r for r in conn.execute(select(t.devices.c.device_id, t.devices.c.state,
                                                         t.devices.c.state_received_at))}
    per_device = []
    for r in conn.execute(select(m.device_id, func.count().label("n"), func.min(m.seq).label("first"),
                                 func.max(m.seq).label("last"), func.max(m.ts).label("last_ts"))
                          .group_by(m.device_id).order_by(m.device_id)):
        st = state.get(r.device_id)
        per_device.append({"device_id": r.device_id, "messages": int(r.n), "first_seq": int(r.first),
                           "last_seq": int(r.last), "missing": gaps.get(r.device_id, 0),
                           "last_capture": iso(r.last_ts), "state": st.state if st else None})
    for dev, st in sorted(state.items()):
        if not any(d["device_id"] == dev for d in per_device):
            per_device.append({"device_id": dev, "messages": 0, "first_seq": None, "last_seq": None,
                               "missing": 0, "last_capture": None, "state": st.state})
    return per_device


def _filtered(stmt: Select[Any], table: Any, flt: Filter, since_col: str) -> Select[Any]:
    c = table.c
    if flt.bbox is not None:
        x0, y0, x1, y1 = flt.bbox
        stmt = stmt.where(c.min_lon <= x1, c.max_lon >= x0, c.min_lat <= y1, c.max_lat >= y0)
    if flt.since is not None:
        stmt = stmt.where(c[since_col] >= flt.since)
    return stmt


CRACK_FIELDS = ("id", "type", "severity", "length_m", "width_max_mm", "width_median_mm", "observations", "sightings",
                "devices", "device_count", "first_seen", "last_seen", "segment_id", "best_snapshot_id")
SEGMENT_FIELDS = ("id", "length_m", "heading_deg", "survey_width_m", "area_m2", "crack_count", "crack_length_m",
                  "crack_density_m_per_m2", "length_low_m", "length_medium_m", "length_high_m", "condition_index",
                  "condition_class", "complete", "device_id", "first_seen", "last_seen")


def _row(r: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for f in fields:
        v = getattr(r, f)
        out[f] = iso(v) if isinstance(v, datetime) else v
    out["coordinates"] = _coords(r.geom)
    return out


def cracks(db: Database, flt: Filter = Filter()) -> Iterator[dict[str, Any]]:
    """Inventory cracks (``coordinates`` None for cracks that could not be placed; a bbox filter drops them)."""
    c = db.t.cracks
    stmt = _filtered(select(c.c.geom, *[c.c[f] for f in CRACK_FIELDS]), c, flt, "last_seen").order_by(c.c.id)
    with db.connect() as conn:
        for r in conn.execute(stmt):
            yield _row(r, CRACK_FIELDS)


def segments(db: Database, flt: Filter = Filter()) -> Iterator[dict[str, Any]]:
    s = db.t.segments
    stmt = _filtered(select(s.c.geom, *[s.c[f] for f in SEGMENT_FIELDS]), s, flt, "last_seen").order_by(s.c.id)
    with db.connect() as conn:
        for r in conn.execute(stmt):
            yield _row(r, SEGMENT_FIELDS)


def snapshot(db: Database, snapshot_id: int) -> tuple[str, bytes] | None:
    """(content type, JPEG bytes) of a snapshot, e.g. a crack's ``best_snapshot_id``."""
    s = db.t.snapshots.c
    with db.connect() as conn:
        row = conn.execute(select(s.content_type, s.jpeg).where(s.id == snapshot_id)).first()
    return (row.content_type, bytes(row.jpeg)) if row else None


def seq_gaps(db: Database, device_id: str | None = None) -> list[dict[str, Any]]:
    """Missing sequence numbers as ranges (device_id, first_missing, last_missing, missing)."""
    sql = "SELECT device_id, first_missing, last_missing, missing FROM seq_gaps"
    params: dict[str, Any] = {}
    if device_id is not None:
        sql += " WHERE device_id = :d"
        params["d"] = device_id
    with db.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql + " ORDER BY device_id, first_missing"), params)]
