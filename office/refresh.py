"""The refresh step: brings the inventory, the segments and the best snapshots up to date.

Why a step and not part of each ingest transaction: merging needs the neighbourhood of a
crack (other cracks, other passes), which two ingest workers writing at the same time would
see half-written; doing it per message would also put shapely and geodesy on the hot path.
Instead ingest only stores observations (``crack_id`` null) and positions (``segment_state``
0), and this step merges whatever is committed and pending, under one lock, so two workers
never merge at once and nothing is merged twice or missed, whatever the arrival order.

Who runs it, so nobody has to: every ingest worker every ``refresh_interval_s`` (skipping if
another worker holds the lock), and ``stats``/``export`` before they read (waiting for the
lock, so they report everything stored so far). ``rebuild`` recomputes everything from the
stored observations, e.g. after changing the analysis settings. Incremental merging depends
a little on arrival order (greedy clustering); a rebuild is ordered by capture time and thus
reproducible.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import update

from office.config import AnalysisConfig
from office.crack_queries import unsegmented_cracks_in
from office.inventory import merge_pending
from office.segments import SegmentBuilder, update_metrics
from office.snapshots import choose_best, cracks_for_new_snapshots
from office.store.database import Database

log = logging.getLogger(__name__)

# one transaction per round: small enough that ingest (SQLite: the same write lock) waits seconds, not minutes
CHUNK_OBSERVATIONS = 5_000
CHUNK_POSITIONS = 5_000


@dataclass
class RefreshResult:
    ran: bool = False
    rounds: int = 0
    observations: int = 0
    positions: int = 0
    cracks_created: int = 0
    cracks_merged: int = 0
    segments_created: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"merged {self.observations} observations ({self.cracks_created} new cracks, {self.cracks_merged} "
                f"joined), placed {self.positions} positions ({self.segments_created} new segments) in "
                f"{self.seconds:.1f} s")


def refresh(db: Database, *, wait: bool = True, max_rounds: int | None = None) -> RefreshResult:
    """Process everything pending, one bounded transaction per round. ``wait=False``: give up at
    once when another process is refreshing (it will do the work)."""
    out = RefreshResult()
    start = time.monotonic()
    while max_rounds is None or out.rounds < max_rounds:
        with db.begin() as conn:
            if not db.refresh_lock(conn, wait=wait):
                break
            out.ran = True
            cfg = db.analysis_config(conn)
            now = datetime.now(timezone.utc)
            builder = SegmentBuilder(conn, db, cfg.segments, now)
            seg = builder.run(CHUNK_POSITIONS)
            merged = merge_pending(conn, db, cfg.inventory, now, CHUNK_OBSERVATIONS)
            cracks = set(merged.touched)
            if seg.new_bbox is not None:
                cracks |= unsegmented_cracks_in(conn, db, seg.new_bbox)
            changed_segments = builder.assign_cracks(cracks) | merged.old_segments | seg.touched
            update_metrics(conn, db, cfg.segments, changed_segments, now)
            pictured = cracks_for_new_snapshots(conn, db)
            choose_best(conn, db, merged.touched | pictured)
        out.rounds += 1
        out.observations += merged.observations
        out.positions += seg.positions
        out.cracks_created += merged.created
        out.cracks_merged += merged.absorbed
        out.segments_created += seg.created
        if merged.observations < CHUNK_OBSERVATIONS and seg.positions < CHUNK_POSITIONS and not pictured:
            break
    out.seconds = time.monotonic() - start
    return out


def rebuild(db: Database, analysis: AnalysisConfig | None = None) -> RefreshResult:
    """Forget the inventory and the segments and derive them again from the stored messages."""
    t = db.t
    with db.begin() as conn:
        db.refresh_lock(conn, wait=True)
        if analysis is not None:
            db.set_analysis_config(conn, analysis)
        for table in (t.cracks, t.crack_tracks, t.segments, t.segment_builders):
            conn.execute(table.delete())
        conn.execute(update(t.crack_observations).values(crack_id=None))
        m = t.detection_messages.c
        conn.execute(update(t.detection_messages).values(segment_id=None, segment_state=1))
        conn.execute(update(t.detection_messages).where(
            m.lat.is_not(None), m.lon.is_not(None), m.heading_deg.is_not(None),
            m.fix_quality != "none").values(segment_state=0))
        conn.execute(update(t.snapshots).values(linked=0))
    return refresh(db, wait=True)
