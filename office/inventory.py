"""The crack inventory: one record per physical crack, from many observations (frames, passes, vehicles).

Rules (docs/office.md, "Merging"):

1. Observations of one (device, track_id) are one crack: the agent's tracker already followed
   it across consecutive frames, and track ids are unique per device run.
2. A track not seen before becomes a group; its line is the centreline of its observations.
   It joins an existing crack when the two lines are similar: at least ``min_overlap`` of the
   shorter line lies within ``tolerance_m`` of the longer (a buffered overlap, so a crack seen
   whole on one pass and in part on another still matches, unlike a Hausdorff distance) and,
   for lines of at least ``min_angle_length_m`` that are not alligator networks, their
   directions differ by at most ``max_angle_deg``. If it matches several cracks, they are one
   crack seen in pieces before: all merge into the best match (largest overlap).
3. A crack's attributes come from all its observations: first/last seen, observation count,
   sightings (distinct device+track), devices, length = the longer of its centreline and its
   longest single observation, max width = max of width_max_mm, median width = median of
   width_mean_mm, type = the most frequent (ties: alligator, transverse, diagonal,
   longitudinal, i.e. the structurally worse first), severity = the worst observed.
4. Observations that could not be placed (no heading, no fix, schema v1) still form cracks by
   rule 1, without geometry.

The step is incremental (only observations with no crack yet) and runs under the refresh lock
(``office.refresh``), never concurrently with itself.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, bindparam, select, tuple_, update

from office.config import InventoryConfig
from office.crack_lengths import pass_lengths
from office.crack_queries import CHUNK, MAX_CRACK_DEG
from office.geo import FloatArray
from office.grid import GridIndex, expand, new_blocks
from office.lines import (
    LocalFrame,
    angle_diff_deg,
    axis_angle_deg,
    centreline,
    densify,
    frame_for,
    line_wkt,
    overlap_share,
    parse_line,
    polyline_length,
)
from office.store.database import Database

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}
TYPE_TIE_ORDER = ("alligator", "transverse", "diagonal", "longitudinal")
GRID_DEG = 0.001     # in-memory index cells (about 110 m x 70 m at 50 degrees latitude)
BLOCK_DEG = 0.01     # database prefetch blocks


@dataclass
class CrackState:
    """A crack while this run works on it: its observations' lines (lon/lat) and its current line."""

    id: int
    line: FloatArray | None
    types: Counter[str] = field(default_factory=Counter)
    # observation lines per sighting (device, track); None until loaded from the database
    pieces: dict[tuple[str, str], list[FloatArray]] | None = None
    segment_id: int | None = None
    touched: bool = False
    new: bool = False       # not in the database yet (inserted by ``_finalize``)
    fresh: bool = False     # ``line`` is the centreline of all of ``pieces``
    _box: tuple[float, float, float, float] | None = None

    def set_line(self, line: FloatArray | None) -> None:
        self.line, self._box, self.fresh = line, None, True

    def bbox(self) -> tuple[float, float, float, float] | None:
        if self.line is None:
            return None
        if self._box is None:
            self._box = _bbox(self.line)
        return self._box

    @property
    def alligator(self) -> bool:
        return bool(self.types) and self.types.most_common(1)[0][0] == "alligator"


@dataclass
class Group:
    """The pending observations of one (device, track)."""

    device_id: str
    track_id: str
    obs_ids: list[int] = field(default_factory=list)
    pieces: list[FloatArray] = field(default_factory=list)
    types: Counter[str] = field(default_factory=Counter)


@dataclass
class MergeResult:
    observations: int = 0
    created: int = 0
    absorbed: int = 0
    touched: set[int] = field(default_factory=set)
    old_segments: set[int] = field(default_factory=set)


def _bbox(coords: FloatArray) -> tuple[float, float, float, float]:
    return float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max())


def all_pieces(pieces: dict[tuple[str, str], list[FloatArray]] | None) -> list[FloatArray]:
    return [p for key in sorted(pieces or {}) for p in (pieces or {})[key]]


def merged_line(pieces: Sequence[FloatArray], cfg: InventoryConfig) -> tuple[FloatArray, float] | None:
    """The centreline (lon/lat) of several observation lines and its length in metres."""
    if not pieces:
        return None
    frame = frame_for(float(pieces[0][0, 0]), float(pieces[0][0, 1]))
    xy = np.vstack([densify(frame.to_xy(p), cfg.centreline_bin_m / 2) for p in pieces])
    line = centreline(xy, cfg.centreline_bin_m)
    return frame.to_lonlat(line), polyline_length(line)


class Merger:
    """One incremental merge pass over pending observations (inside the caller's transaction)."""

    def __init__(self, conn: Connection, db: Database, cfg: InventoryConfig, now: datetime):
        self.conn, self.db, self.t, self.cfg, self.now = conn, db, db.t, cfg, now
        self.states: dict[int, CrackState] = {}
        self.grid = GridIndex(GRID_DEG)
        self.blocks: set[tuple[int, int]] = set()
        self.absorbed_into: dict[int, int] = {}
        self.result = MergeResult()
        self._ids = db.id_allocator(conn, db.t.cracks)

    # -- index of cracks near the work ------------------------------------------------------
    def _index(self, state: CrackState) -> None:
        box = state.bbox()
        if box is not None:
            self.grid.add(state.id, box)

    def _unindex(self, state: CrackState) -> None:
        box = state.bbox()
        if box is not None:
            self.grid.discard(state.id, box)

    def _prefetch(self, bbox: tuple[float, float, float, float]) -> None:
        """Load the cracks of every database block the box touches (once per run)."""
        c = self.t.cracks.c
        for x0, y0, x1, y1 in new_blocks(bbox, BLOCK_DEG, self.blocks):
            rows = self.conn.execute(
                select(c.id, c.geom, c.type, c.segment_id).where(
                    c.min_lat <= y1, c.min_lat >= y0 - MAX_CRACK_DEG, c.max_lat >= y0, c.min_lon <= x1,
                    c.max_lon >= x0)).all()
            for cid, geom, ctype, seg in rows:
                if cid in self.states:
                    continue
                st = CrackState(int(cid), None, Counter({ctype: 1}), segment_id=seg)
                st.set_line(parse_line(geom))
                self.states[st.id] = st
                self._index(st)

    def _near(self, bbox: tuple[float, float, float, float]) -> list[CrackState]:
        out = []
        for i in self.grid.near(bbox):
            st = self.states[i]
            b = st.bbox()
            if b and b[0] <= bbox[2] and b[2] >= bbox[0] and b[1] <= bbox[3] and b[3] >= bbox[1]:
                out.append(st)
        return out

    def _state(self, crack_id: int) -> CrackState:
        """The working state of a crack, loading its observation lines when first touched."""
        st = self.states.get(crack_id)
        if st is None:
            c = self.t.cracks.c
            row = self.conn.execute(select(c.geom, c.type, c.segment_id).where(c.id == crack_id)).one()
            st = CrackState(crack_id, None, Counter({row.type: 1}), segment_id=row.segment_id)
            st.set_line(parse_line(row.geom))
            self.states[crack_id] = st
            self._index(st)
        if st.pieces is None:
            o = self.t.crack_observations.c
            rows = self.conn.execute(select(o.device_id, o.track_id, o.geom, o.type)
                                     .where(o.crack_id == crack_id)).all()
            st.pieces = {}
            for r in rows:
                line = parse_line(r.geom)
                if line is not None:
                    st.pieces.setdefault((r.device_id, r.track_id), []).append(line)
            st.types = Counter(r.type for r in rows)
        if not st.touched:
            st.touched = True
            if st.segment_id is not None:
                self.result.old_segments.add(st.segment_id)
        return st

    # -- the pass -----------------------------------------------------------------------------
    def run(self, limit: int) -> MergeResult:
        o = self.t.crack_observations.c
        rows = self.conn.execute(
            select(o.id, o.device_id, o.track_id, o.type, o.geom).where(o.crack_id.is_(None))
            .order_by(o.ts, o.id).limit(limit)).all()
        if not rows:
            return self.result
        groups: dict[tuple[str, str], Group] = {}
        for r in rows:
            g = groups.get((r.device_id, r.track_id))
            if g is None:
                g = groups[(r.device_id, r.track_id)] = Group(r.device_id, r.track_id)
            g.obs_ids.append(int(r.id))
            g.types[r.type] += 1
            line = parse_line(r.geom)
            if line is not None:
                g.pieces.append(line)
        known = self._known_tracks(list(groups))
        assignments: list[tuple[int, int]] = []      # (observation id, crack id)
        new_tracks: list[tuple[str, str, int]] = []
        for key, g in groups.items():
            crack_id = known.get(key)
            if crack_id is None:
                crack_id = self._place(g)
                new_tracks.append((g.device_id, g.track_id, crack_id))
            else:
                st = self._state(self._resolve(crack_id))
                self._grow(st, g)
            assignments += [(oid, crack_id) for oid in g.obs_ids]
        self._write(assignments, new_tracks)
        self.result.observations = len(rows)
        self._finalize()
        return self.result

    def _resolve(self, crack_id: int) -> int:
        while crack_id in self.absorbed_into:
            crack_id = self.absorbed_into[crack_id]
        return crack_id

    def _known_tracks(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        ct = self.t.crack_tracks.c
        out: dict[tuple[str, str], int] = {}
        for i in range(0, len(keys), CHUNK):
            part = keys[i:i + CHUNK]
            for dev, trk, cid in self.conn.execute(
                    select(ct.device_id, ct.track_id, ct.crack_id).where(tuple_(ct.device_id, ct.track_id).in_(part))):
                out[(dev, trk)] = int(cid)
        return out

    def _grow(self, st: CrackState, g: Group) -> None:
        self._unindex(st)
        assert st.pieces is not None
        st.pieces.setdefault((g.device_id, g.track_id), []).extend(g.pieces)
        st.types += g.types
        merged = merged_line(all_pieces(st.pieces), self.cfg)
        st.set_line(merged[0] if merged else st.line)
        self._index(st)
        self.result.touched.add(st.id)

    def _similar(self, frame: LocalFrame, g_xy: FloatArray, g_length: float, g_alligator: bool,
                 st: CrackState) -> tuple[float, float] | None:
        """``g_length``: ``polyline_length(g_xy)``, computed once per group by the caller."""
        assert st.line is not None
        c_xy = frame.to_xy(st.line)
        share, dist = overlap_share(g_xy, c_xy, self.cfg.tolerance_m)
        if share < self.cfg.min_overlap:
            return None
        if (min(g_length, polyline_length(c_xy)) >= self.cfg.min_angle_length_m and not g_alligator and not st.alligator
                and angle_diff_deg(axis_angle_deg(g_xy), axis_angle_deg(c_xy)) > self.cfg.max_angle_deg):
            return None
        return share, dist

    def _place(self, g: Group) -> int:
        """A track seen for the first time: join the crack it matches (merging several), or a new one."""
        merged = merged_line(g.pieces, self.cfg)
        if merged is None:
            return self._create(g, None)
        line, _ = merged
        box = _bbox(line)
        self._prefetch(expand(box, self.cfg.tolerance_m + 1.0))
        frame = frame_for(float(line[0, 0]), float(line[0, 1]))
        g_xy = frame.to_xy(line)
        g_length = polyline_length(g_xy)
        g_alligator = g.types.most_common(1)[0][0] == "alligator"
        scored = []
        for st in self._near(expand(box, self.cfg.tolerance_m)):
            s = self._similar(frame, g_xy, g_length, g_alligator, st)
            if s is not None:
                scored.append((-s[0], s[1], st.id))
        if not scored:
            return self._create(g, line)
        scored.sort()
        keep = self._state(scored[0][2])
        for _, _, other_id in scored[1:]:
            self._absorb(keep, self._state(other_id))
        self._grow(keep, g)
        return keep.id

    def _create(self, g: Group, line: FloatArray | None) -> int:
        crack_id = self._ids()
        st = CrackState(crack_id, None, Counter(g.types), pieces={(g.device_id, g.track_id): list(g.pieces)},
                        touched=True, new=True)
        st.set_line(line)
        self.states[crack_id] = st
        self._index(st)
        self.result.created += 1
        self.result.touched.add(crack_id)
        return crack_id

    def _absorb(self, keep: CrackState, other: CrackState) -> None:
        """Two cracks turned out to be one: move everything of ``other`` to ``keep``."""
        t = self.t
        if not other.new:
            self.conn.execute(update(t.crack_observations).where(t.crack_observations.c.crack_id == other.id)
                              .values(crack_id=keep.id))
            self.conn.execute(update(t.crack_tracks).where(t.crack_tracks.c.crack_id == other.id)
                              .values(crack_id=keep.id))
            self.conn.execute(t.cracks.delete().where(t.cracks.c.id == other.id))
        self._unindex(other)
        assert keep.pieces is not None and other.pieces is not None
        for key, lines in other.pieces.items():
            keep.pieces.setdefault(key, []).extend(lines)
        keep.types += other.types
        del self.states[other.id]
        self.absorbed_into[other.id] = keep.id
        self.result.touched.discard(other.id)
        self.result.absorbed += 1
        if other.segment_id is not None:
            self.result.old_segments.add(other.segment_id)

    def _write(self, assignments: list[tuple[int, int]], new_tracks: list[tuple[str, str, int]]) -> None:
        t = self.t
        if new_tracks:
            self.conn.execute(t.crack_tracks.insert(), [
                {"device_id": d, "track_id": k, "crack_id": self._resolve(c)} for d, k, c in new_tracks])
        if assignments:
            o = t.crack_observations
            stmt = update(o).where(o.c.id == bindparam("oid")).values(crack_id=bindparam("cid"))
            self.conn.execute(stmt, [{"oid": oid, "cid": self._resolve(cid)} for oid, cid in assignments])

    # -- attributes -----------------------------------------------------------------------------
    def _length(self, st: CrackState, obs: Sequence[Any]) -> float:
        """The longest pass (``pass_lengths``); not the extent of all passes together: their GNSS
        offsets along the crack would lengthen it."""
        return max(pass_lengths(st.pieces, obs))

    def _finalize(self) -> None:
        """Recompute every touched crack from all its observations."""
        ids = sorted(self.result.touched)
        o = self.t.crack_observations.c
        rows_by: dict[int, list[Any]] = {i: [] for i in ids}
        for i in range(0, len(ids), CHUNK):
            part = ids[i:i + CHUNK]
            for r in self.conn.execute(select(o.crack_id, o.device_id, o.track_id, o.ts, o.type, o.severity,
                                              o.length_m, o.width_mean_mm, o.width_max_mm, o.clipped)
                                       .where(o.crack_id.in_(part))):
                rows_by[int(r.crack_id)].append(r)
        updates = []
        for cid in ids:
            obs = rows_by[cid]
            if not obs:
                continue
            st = self.states[cid]
            if not st.fresh:
                merged = merged_line(all_pieces(st.pieces), self.cfg)
                st.set_line(merged[0] if merged else None)
            line = st.line
            box = _bbox(line) if line is not None else None
            devices = sorted({r.device_id for r in obs})
            types = Counter(r.type for r in obs)
            top = max(types.values())
            ctype = next(t for t in TYPE_TIE_ORDER if types.get(t) == top)
            updates.append({
                "cid": cid, "geom": line_wkt(line) if line is not None else None,
                "min_lon": box[0] if box else None, "min_lat": box[1] if box else None,
                "max_lon": box[2] if box else None, "max_lat": box[3] if box else None,
                "first_seen": min(r.ts for r in obs), "last_seen": max(r.ts for r in obs),
                "observations": len(obs), "sightings": len({(r.device_id, r.track_id) for r in obs}),
                "devices": ",".join(devices), "device_count": len(devices),
                "length_m": round(self._length(st, obs), 3),
                "width_max_mm": max(r.width_max_mm for r in obs),
                "width_median_mm": round(float(statistics.median(r.width_mean_mm for r in obs)), 2),
                "type": ctype, "severity": max((r.severity for r in obs), key=SEVERITY_RANK.__getitem__),
                "updated_at": self.now})
        c = self.t.cracks
        inserts = [{**{k: v for k, v in u.items() if k != "cid"}, "id": u["cid"]} for u in updates
                   if self.states[u["cid"]].new]
        if inserts:
            self.conn.execute(c.insert(), inserts)
        changes = [u for u in updates if not self.states[u["cid"]].new]
        if changes:
            stmt = update(c).where(c.c.id == bindparam("cid")).values(
                {k: bindparam(k) for k in changes[0] if k != "cid"})
            self.conn.execute(stmt, changes)


def merge_pending(conn: Connection, db: Database, cfg: InventoryConfig, now: datetime, limit: int) -> MergeResult:
    """Merge up to ``limit`` pending observations into the inventory (caller holds the refresh lock)."""
    return Merger(conn, db, cfg, now).run(limit)
