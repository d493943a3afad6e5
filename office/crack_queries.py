"""Small reads of the inventory used by the segment and refresh steps."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sqlalchemy import Connection, and_, select

from office.lines import frame_for, parse_line
from office.store.database import Database

CHUNK = 500
MAX_CRACK_DEG = 0.01  # no crack is longer than ~1 km: bounds the index scan on min_lat


def crack_midpoints(conn: Connection, db: Database, ids: Iterable[int]) -> dict[int, tuple[float, float] | None]:
    """Midpoint (lon, lat) of each crack's line, None for unplaced cracks."""
    c = db.t.cracks.c
    out: dict[int, tuple[float, float] | None] = {}
    id_list = sorted(ids)
    for i in range(0, len(id_list), CHUNK):
        for cid, geom in conn.execute(select(c.id, c.geom).where(c.id.in_(id_list[i:i + CHUNK]))):
            line = parse_line(geom)
            if line is None:
                out[int(cid)] = None
                continue
            frame = frame_for(float(line[0, 0]), float(line[0, 1]))
            xy = frame.to_xy(line)
            seg = np.hypot(*np.diff(xy, axis=0).T)
            half = float(seg.sum()) / 2
            cum = np.concatenate([[0.0], np.cumsum(seg)])
            k = int(np.clip(np.searchsorted(cum, half) - 1, 0, len(seg) - 1))
            frac = 0.0 if seg[k] == 0 else (half - cum[k]) / seg[k]
            mid = xy[k] + frac * (xy[k + 1] - xy[k])
            lon, lat = frame.to_lonlat(mid)[0]
            out[int(cid)] = (float(lon), float(lat))
    return out


def unsegmented_cracks_in(conn: Connection, db: Database, bbox: tuple[float, float, float, float]) -> set[int]:
    """Placed cracks with no segment inside ``bbox`` (new segments may now cover them)."""
    c = db.t.cracks.c
    x0, y0, x1, y1 = bbox
    return {int(r[0]) for r in conn.execute(select(c.id).where(and_(
        c.segment_id.is_(None), c.min_lat <= y1, c.min_lat >= y0 - MAX_CRACK_DEG, c.max_lat >= y0,
        c.min_lon <= x1, c.max_lon >= x0)))}
