"""The best snapshot of each crack: a picture for people looking at the inventory.

The agent sends a snapshot (JPEG with the cracks drawn) now and then, tagged with its frame
index. A crack's best snapshot is one taken of a frame in which it was observed, preferring
the observation where most of the crack was in view (longest ``length_m``), then the latest.
When no snapshot of such a frame exists, the snapshot of the same vehicle nearest in time
within ``WINDOW_S`` seconds of an observation is taken (it shows the same stretch of road).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, select, update

from office.crack_queries import CHUNK
from office.store.database import Database

WINDOW_S = 1.0


def cracks_for_new_snapshots(conn: Connection, db: Database, limit: int = 5000) -> set[int]:
    """Cracks that new snapshots (``linked = 0``) may improve; marks those snapshots as linked."""
    s, o = db.t.snapshots.c, db.t.crack_observations.c
    snaps = conn.execute(select(s.id, s.device_id, s.frame_index, s.ts).where(s.linked == 0)
                         .order_by(s.id).limit(limit)).all()
    if not snaps:
        return set()
    out: set[int] = set()
    window = timedelta(seconds=WINDOW_S)
    for snap in snaps:
        cond = and_(o.device_id == snap.device_id, o.ts >= snap.ts - window, o.ts <= snap.ts + window)
        if snap.frame_index is not None:
            cond = cond | and_(o.device_id == snap.device_id, o.frame_index == snap.frame_index)
        out |= {int(r[0]) for r in conn.execute(select(o.crack_id).where(cond, o.crack_id.is_not(None)).distinct())}
    conn.execute(update(db.t.snapshots).where(s.id.in_([r.id for r in snaps])).values(linked=1))
    return out


def choose_best(conn: Connection, db: Database, crack_ids: Iterable[int]) -> None:
    """Set ``cracks.best_snapshot_id`` for the given cracks."""
    s, o = db.t.snapshots.c, db.t.crack_observations.c
    ids = sorted(set(crack_ids))
    window = timedelta(seconds=WINDOW_S)
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        best: dict[int, Any] = {}
        for cid, sid, length, ts in conn.execute(
                select(o.crack_id, s.id, o.length_m, s.ts)
                .select_from(db.t.crack_observations.join(db.t.snapshots, and_(s.device_id == o.device_id,
                                                                                s.frame_index == o.frame_index)))
                .where(o.crack_id.in_(part))):
            key = (float(length), ts, int(sid))
            if cid not in best or key > best[cid]:
                best[cid] = key
        chosen = {cid: key[2] for cid, key in best.items()}
        missing = [cid for cid in part if cid not in chosen]
        if missing:
            obs = conn.execute(select(o.crack_id, o.device_id, o.ts).where(o.crack_id.in_(missing))).all()
            by_device: dict[str, list[Any]] = {}
            for r in obs:
                by_device.setdefault(r.device_id, []).append(r)
            near: dict[int, tuple[float, int]] = {}
            for device, rows in by_device.items():
                lo = min(r.ts for r in rows) - window
                hi = max(r.ts for r in rows) + window
                snaps = conn.execute(select(s.id, s.ts).where(s.device_id == device, s.ts >= lo, s.ts <= hi)).all()
                for r in rows:
                    for snap in snaps:
                        gap = abs((snap.ts - r.ts).total_seconds())
                        if gap <= WINDOW_S and (r.crack_id not in near or (gap, -snap.id) < near[r.crack_id]):
                            near[r.crack_id] = (gap, -snap.id)
            chosen.update({cid: -v[1] for cid, v in near.items()})
        if chosen:
            c = db.t.cracks
            conn.execute(update(c).where(c.c.id == bindparam("cid")).values(best_snapshot_id=bindparam("sid")),
                         [{"cid": cid, "sid": sid} for cid, sid in chosen.items()])
