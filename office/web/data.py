"""What the page reads: the fleet, bounded and ordered crack and segment lists, one crack in detail.

Why not only ``office.query``: the exports stream everything in id order, while a page needs
bounded answers (``limit``/``offset`` with the total count) ordered by what matters first (the
worst cracks when a map cannot show them all, the worst segments at the top of the table),
plus the vehicles' state and one crack's observations. The row format is the exports' own
(``query.CRACK_FIELDS``/``SEGMENT_FIELDS``, ISO-8601 UTC times, lon/lat coordinates), so the
API and a GeoJSON export describe a crack the same way. Everything here only reads.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Select, case, func, select

from office import query
from office.lines import parse_line
from office.store.database import Database
from office.web.params import Page

MAX_DEVICES = 1000
RECENT_OBSERVATIONS = 20


def coordinates(wkt: str | None) -> list[list[float]] | None:
    line = parse_line(wkt)
    if line is None:
        return None
    return [[round(float(x), query.COORD_DIGITS), round(float(y), query.COORD_DIGITS)] for x, y in line]


def _plain(value: Any) -> Any:
    return query.iso(value) if isinstance(value, datetime) else value


def feature(r: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """A GeoJSON Feature (RFC 7946) with the export's properties; ``geometry`` null when not placed."""
    coords = coordinates(r.geom)
    return {"type": "Feature", "id": r.id,
            "geometry": {"type": "LineString", "coordinates": coords} if coords else None,
            "properties": {f: _plain(getattr(r, f)) for f in fields}}


def _where(stmt: Select[Any], table: Any, flt: query.Filter, **extra: tuple[str, ...] | None) -> Select[Any]:
    c = table.c
    if flt.bbox is not None:
        x0, y0, x1, y1 = flt.bbox
        stmt = stmt.where(c.min_lon <= x1, c.max_lon >= x0, c.min_lat <= y1, c.max_lat >= y0)
    if flt.since is not None:
        stmt = stmt.where(c.last_seen >= flt.since)
    for column, values in extra.items():
        if values is not None:
            stmt = stmt.where(c[column].in_(values))
    return stmt


def _listing(db: Database, table: Any, fields: tuple[str, ...], where: Any, order: list[Any],
             pg: Page) -> dict[str, Any]:
    cols = [table.c.geom, *[table.c[f] for f in fields]]
    with db.connect() as conn:
        total = int(conn.execute(where(select(func.count()).select_from(table))).scalar() or 0)
        rows = conn.execute(where(select(*cols)).order_by(*order).limit(pg.limit).offset(pg.offset)).all()
    features = [feature(r, fields) for r in rows]
    return {"type": "FeatureCollection", "features": features, "total": total, "returned": len(features),
            "offset": pg.offset, "limit": pg.limit, "truncated": pg.offset + len(features) < total}


def cracks(db: Database, flt: query.Filter, pg: Page, *, severity: tuple[str, ...] | None = None,
           types: tuple[str, ...] | None = None, placed: bool = False) -> dict[str, Any]:
    """Inventory cracks, worst first (high severity, then the longest), so a truncated map shows what matters."""
    c = db.t.cracks

    def where(stmt: Select[Any]) -> Select[Any]:
        stmt = _where(stmt, c, flt, severity=severity, type=types)
        return stmt.where(c.c.geom.is_not(None)) if placed else stmt

    rank = case({"high": 0, "medium": 1, "low": 2}, value=c.c.severity, else_=3)
    return _listing(db, c, query.CRACK_FIELDS, where, [rank, c.c.length_m.desc(), c.c.id], pg)


def segments(db: Database, flt: query.Filter, pg: Page, *, order: str = "worst") -> dict[str, Any]:
    """Road segments; ``worst``: lowest condition index first (then densest), ``id``: in creation order."""
    s = db.t.segments
    keys = ([s.c.condition_index, s.c.crack_density_m_per_m2.desc(), s.c.id] if order == "worst" else [s.c.id])
    return _listing(db, s, query.SEGMENT_FIELDS, lambda stmt: _where(stmt, s, flt), keys, pg)


def crack(db: Database, crack_id: int) -> dict[str, Any] | None:
    """One crack with its best snapshot, its segment and its latest observations."""
    t = db.t
    c, o, sn, sg = t.cracks.c, t.crack_observations.c, t.snapshots.c, t.segments.c
    with db.connect() as conn:
        row = conn.execute(select(c.geom, *[c[f] for f in query.CRACK_FIELDS]).where(c.id == crack_id)).first()
        if row is None:
            return None
        out = feature(row, query.CRACK_FIELDS)
        props = out["properties"]
        props["snapshot"] = None
        if row.best_snapshot_id is not None:
            snap = conn.execute(select(sn.id, sn.device_id, sn.ts, sn.frame_index, sn.size_bytes, sn.content_type)
                                .where(sn.id == row.best_snapshot_id)).first()
            if snap is not None:
                props["snapshot"] = {"id": snap.id, "url": f"/api/v1/snapshots/{snap.id}.jpg",
                                     "device_id": snap.device_id, "ts": query.iso(snap.ts),
                                     "frame_index": snap.frame_index, "size_bytes": snap.size_bytes}
        props["segment"] = None
        if row.segment_id is not None:
            seg = conn.execute(select(sg.id, sg.condition_index, sg.condition_class, sg.crack_density_m_per_m2)
                               .where(sg.id == row.segment_id)).first()
            if seg is not None:
                props["segment"] = {"id": seg.id, "condition_index": seg.condition_index,
                                    "condition_class": seg.condition_class,
                                    "crack_density_m_per_m2": seg.crack_density_m_per_m2}
        obs = conn.execute(select(o.ts, o.device_id, o.track_id, o.frame_index, o.type, o.severity, o.length_m,
                                  o.width_mean_mm, o.width_max_mm, o.confidence, o.clipped)
                           .where(o.crack_id == crack_id).order_by(o.ts.desc(), o.id.desc())
                           .limit(RECENT_OBSERVATIONS)).all()
    props["recent_observations"] = [{k: _plain(v) for k, v in r._mapping.items()} for r in obs]
    return out


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _health(h: Any) -> dict[str, Any] | None:
    """The health numbers a fleet view shows, read defensively (older agents send fewer fields)."""
    if not isinstance(h, dict):
        return None
    return {"fps_in": _number(_get(h, "frames", "fps_in")), "fps_out": _number(_get(h, "frames", "fps_out")),
            "frames_dropped": _number(_get(h, "frames", "dropped")),
            "inference_ms_p50": _number(_get(h, "inference_ms", "p50")),
            "inference_ms_p95": _number(_get(h, "inference_ms", "p95")),
            "outbox_depth": _number(_get(h, "outbox", "depth")),
            "outbox_oldest_age_s": _number(_get(h, "outbox", "oldest_age_s")),
            "camera": _get(h, "camera", "state"), "link": _get(h, "link", "state"),
            "cpu_percent": _number(_get(h, "system", "cpu_percent")),
            "rss_mb": _number(_get(h, "system", "rss_mb")),
            "temperature_c": _number(_get(h, "system", "temperature_c")),
            "paused": _get(h, "paused"), "uptime_s": _number(_get(h, "uptime_s")),
            "model_name": _get(h, "model", "name"), "model_version": _get(h, "model", "version")}


def fleet(db: Database, *, stale_after_s: float, now: datetime | None = None) -> dict[str, Any]:
    """Every vehicle: its retained status (``online``/``stopped``, or ``offline`` from its last will),
    when it was last heard of, its latest health (fps, outbox backlog, model) and its message counts.

    ``stale``: says online but nothing came for ``stale_after_s``; the broker publishes the last
    will only after 1.5 keep-alive intervals, and a broker restart can leave an ``online`` retained.
    """
    now = now or datetime.now(timezone.utc)
    t = db.t
    d, m = t.devices.c, t.detection_messages.c
    with db.connect() as conn:
        devices = {r.device_id: r for r in conn.execute(select(t.devices).order_by(d.device_id).limit(MAX_DEVICES))}
        counts = {r.device_id: r for r in conn.execute(
            select(m.device_id, func.count().label("n"), func.max(m.ts).label("last_capture"),
                   func.max(m.received_at).label("last_received")).group_by(m.device_id)
            .order_by(m.device_id).limit(MAX_DEVICES))}
        gaps = query.missing_by_device(conn)
    vehicles = []
    for dev in sorted(set(devices) | set(counts))[:MAX_DEVICES]:
        row, cnt = devices.get(dev), counts.get(dev)
        health = _health(row.health) if row is not None else None
        heard = [x for x in (row.state_received_at if row else None, row.health_received_at if row else None,
                             cnt.last_received if cnt else None) if x is not None]
        last_seen = max(heard) if heard else None
        state = (row.state if row is not None else None) or "unknown"
        age = (now - last_seen).total_seconds() if last_seen else None
        vehicles.append({
            "device_id": dev, "state": state, "online": state == "online",
            "stale": state == "online" and (age is None or age > stale_after_s),
            "state_ts": query.iso(row.state_ts) if row else None, "last_seen": query.iso(last_seen),
            "last_seen_age_s": None if age is None else round(age, 1),
            "model_name": (row.model_name if row else None) or (health or {}).get("model_name"),
            "model_version": (row.model_version if row else None) or (health or {}).get("model_version"),
            "health_ts": query.iso(row.health_ts) if row else None, "health": health,
            "messages": int(cnt.n) if cnt else 0, "last_capture": query.iso(cnt.last_capture) if cnt else None,
            "missing_seq": gaps.get(dev, 0)})
    online = sum(1 for v in vehicles if v["online"] and not v["stale"])
    return {"vehicles": vehicles, "online": online, "total": len(vehicles), "generated_at": query.iso(now),
            "stale_after_s": stale_after_s}


def extent(db: Database) -> list[float] | None:
    """[minlon, minlat, maxlon, maxlat] of every placed crack and segment (None when there is none)."""
    boxes = []
    with db.connect() as conn:
        for table in (db.t.cracks, db.t.segments):
            c = table.c
            r = conn.execute(select(func.min(c.min_lon), func.min(c.min_lat), func.max(c.max_lon),
                                    func.max(c.max_lat))).first()
            if r is not None and None not in tuple(r):
                boxes.append([float(v) for v in r])
    if not boxes:
        return None
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def summary(db: Database) -> dict[str, Any]:
    """``crackseg-office stats`` without the per-device table (the fleet view has it), plus the extent."""
    s = query.stats(db, per_device=False)
    s["extent"] = extent(db)
    s["generated_at"] = query.iso(datetime.now(timezone.utc))
    return s
