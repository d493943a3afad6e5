"""One batch of MQTT messages -> one database transaction. The caller acknowledges after it returns.

Idempotency: every message table has a unique ``msg_id`` and is written with ``ON CONFLICT DO
NOTHING``; what the database did not insert was a duplicate (a redelivery after a crash or a
lost PUBACK, possibly to the other worker of the shared subscription) and is counted, not
stored. Rows are sent sorted by ``msg_id``/device so that two workers inserting overlapping
batches take their row locks in the same order and cannot deadlock each other.

Failures: a transient database error (connection lost, lock timeout, deadlock, disk full)
raises ``TransientDatabaseError`` and the caller retries the same batch later, acknowledging
nothing meanwhile; any other database error is blamed on the data, so the batch is split in
halves until the one message the database refuses is alone, and that one is quarantined with
the database's reason. Ingest therefore never stops on a message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, exc, func, or_

from office import messages
from office.errors import OfficeError
from office.ingest.rows import Incoming, detection_rows, history_row, quarantine_row, snapshot_row
from office.messages import DetectionMessage, JsonMessage, Quarantine, SnapshotMessage
from office.store.database import Database, dumps, first_line
from office.store.pg_bulk import copy_detections

log = logging.getLogger(__name__)

_HISTORY = {"status": "status_messages", "health": "health_messages", "cmd/response": "cmd_responses"}


class TransientDatabaseError(OfficeError):
    """The database is unreachable or busy; the same batch must be retried (nothing was acknowledged)."""


@dataclass
class BatchOutcome:
    """What one batch did; ``detections`` counts new detection messages only."""

    stored: int = 0
    detections: int = 0
    duplicates: int = 0
    quarantined: int = 0

    def __iadd__(self, other: BatchOutcome) -> BatchOutcome:
        self.stored += other.stored
        self.detections += other.detections
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        return self


def is_transient(err: exc.DBAPIError) -> bool:
    """Connection, lock, deadlock and resource errors are the database's; everything else the data's."""
    if err.connection_invalidated or isinstance(err, exc.OperationalError):
        return True
    state = getattr(err.orig, "sqlstate", None) or ""
    return state[:2] in ("08", "40", "53", "55", "57", "58")


class BatchWriter:
    """Writes batches for one worker (``worker`` names its row in ``ingest_counters``)."""

    def __init__(self, db: Database, worker: str, *, prefix: str = "crackseg", max_payload_bytes: int = 1 << 20,
                 quarantine_keep_bytes: int = 64 << 10):
        self.db, self.worker, self.prefix = db, worker, prefix
        self.max_payload_bytes, self.keep_bytes = max_payload_bytes, quarantine_keep_bytes

    def check(self, item: Incoming) -> messages.Checked:
        return messages.check(item.topic, self.prefix, item.payload, max_bytes=self.max_payload_bytes,
                              user_properties=item.user_properties, content_type=item.content_type)

    def write(self, batch: Sequence[Incoming]) -> BatchOutcome:
        """Store a batch in one transaction (or, on a data error, in halves); raise only TransientDatabaseError."""
        checked = [(item, self.check(item)) for item in batch]
        return self._write_checked(checked)

    def _write_checked(self, checked: list[tuple[Incoming, messages.Checked]]) -> BatchOutcome:
        try:
            with self.db.begin() as conn:
                return self._store(conn, checked)
        except Exception as err:  # noqa: BLE001 - a message that breaks the office must not stop it
            if isinstance(err, exc.DBAPIError) and is_transient(err):
                raise TransientDatabaseError(f"database error (will retry): {first_line(err)}") from err
            if not isinstance(err, exc.DBAPIError):
                log.exception("storing a batch of %d failed", len(checked))
            if len(checked) > 1:
                log.warning("database refused a batch of %d (%s); splitting it to find the message",
                            len(checked), first_line(err))
                half = len(checked) // 2
                out = self._write_checked(checked[:half])
                out += self._write_checked(checked[half:])
                return out
            item, result = checked[0]
            if isinstance(result, Quarantine):
                # even its quarantine row (NUL-free text, bytes) cannot be written: the database's problem
                raise TransientDatabaseError(f"cannot write a quarantine row: {first_line(err)}") from err
            who = "database refused it" if isinstance(err, exc.DBAPIError) else f"office error {type(err).__name__}"
            log.error("%s: a message on %s: %s; quarantined", who, item.topic, first_line(err))
            return self._write_checked([(item, Quarantine(f"{who}: {first_line(err)}"[:300]))])

    # -- the transaction ----------------------------------------------------------------------
    def _store(self, conn: Connection, checked: list[tuple[Incoming, messages.Checked]]) -> BatchOutcome:
        t = self.db.t
        out = BatchOutcome()
        dets: dict[str, tuple[DetectionMessage, datetime]] = {}
        history: dict[str, list[tuple[JsonMessage, Incoming]]] = {k: [] for k in _HISTORY}
        snaps: dict[str, dict[str, Any]] = {}
        quarantined: dict[str, dict[str, Any]] = {}
        for item, result in checked:
            if isinstance(result, DetectionMessage):
                if result.msg_id in dets:
                    out.duplicates += 1
                else:
                    dets[result.msg_id] = (result, item.received_at)
            elif isinstance(result, JsonMessage):
                history[result.kind].append((result, item))
            elif isinstance(result, SnapshotMessage):
                if result.msg_id in snaps:
                    out.duplicates += 1
                else:
                    snaps[result.msg_id] = snapshot_row(result, item.received_at)
            else:
                row = quarantine_row(item, result, self.keep_bytes)
                if row["sha256"] in quarantined:
                    quarantined[row["sha256"]]["times"] += 1
                    quarantined[row["sha256"]]["last_received_at"] = item.received_at
                else:
                    quarantined[row["sha256"]] = row

        if dets:
            rows = detection_rows([dets[k] for k in sorted(dets)], "ewkb" if self.db.is_postgres else "wkt")
            if self.db.is_postgres:
                staged = [dict(row, msg_id=mid) for mid, obs_rows in rows.observations.items() for row in obs_rows]
                new = copy_detections(conn, t, rows.messages, staged)
            else:
                stmt = self.db.insert_ignore(t.detection_messages, "msg_id").returning(
                    t.detection_messages.c.id, t.detection_messages.c.msg_id)
                new = {mid: rid for rid, mid in conn.execute(stmt, rows.messages).all()}
                obs = []
                for mid, rid in new.items():
                    for row in rows.observations[mid]:
                        row["message_id"] = rid
                        obs.append(row)
                if obs:
                    conn.execute(t.crack_observations.insert(), obs)
            out.detections += len(new)
            out.stored += len(new)
            out.duplicates += len(rows.messages) - len(new)

        for kind, items in history.items():
            if items:
                out += self._store_history(conn, kind, items)

        if snaps:
            stmt = self.db.insert_ignore(t.snapshots, "msg_id").returning(t.snapshots.c.msg_id)
            inserted = len(conn.execute(stmt, [snaps[k] for k in sorted(snaps)]).all())
            out.stored += inserted
            out.duplicates += len(snaps) - inserted

        if quarantined:
            ins = self.db.insert_upsert(t.quarantine)
            conn.execute(ins.on_conflict_do_update(
                index_elements=["sha256"],
                set_={"times": t.quarantine.c.times + ins.excluded.times,
                      "last_received_at": ins.excluded.last_received_at}),
                [quarantined[k] for k in sorted(quarantined)])
            out.quarantined += sum(r["times"] for r in quarantined.values())

        ins = self.db.insert_upsert(t.ingest_counters)
        conn.execute(ins.on_conflict_do_update(
            index_elements=["worker"],
            set_={"stored": t.ingest_counters.c.stored + ins.excluded.stored,
                  "duplicates": t.ingest_counters.c.duplicates + ins.excluded.duplicates,
                  "quarantined": t.ingest_counters.c.quarantined + ins.excluded.quarantined,
                  "updated_at": ins.excluded.updated_at}),
            {"worker": self.worker, "stored": out.stored, "duplicates": out.duplicates,
             "quarantined": out.quarantined, "updated_at": datetime.now(timezone.utc)})
        return out

    def _store_history(self, conn: Connection, kind: str, items: list[tuple[JsonMessage, Incoming]]) -> BatchOutcome:
        """status / health / cmd/response: history rows, and the latest status and health per device."""
        t = self.db.t
        table = getattr(t, _HISTORY[kind])
        out = BatchOutcome()
        rows: dict[str, dict[str, Any]] = {}
        replays = 0
        for msg, item in items:
            if msg.msg_id in rows:
                replays += 1
                continue
            rows[msg.msg_id] = history_row(msg, item.received_at, item.retain)
        stmt = self.db.insert_ignore(table, "msg_id").returning(table.c.msg_id)
        new = {r[0] for r in conn.execute(stmt, [rows[k] for k in sorted(rows)]).all()}
        out.stored += len(new)
        if kind != "status":
            # status is subscribed by every worker (and replayed, retained, at every subscription):
            # a second copy of a status is expected there, not a re-delivery worth counting
            out.duplicates += replays + sum(1 for k in rows if k not in new)
        if kind == "cmd/response":
            return out
        latest: dict[str, dict[str, Any]] = {}
        for msg, item in items:     # receive order: the last one of each device wins
            if msg.msg_id not in new:
                continue
            d = msg.data
            if kind == "status":
                raw_model = d.get("model")
                model: dict[str, Any] = raw_model if isinstance(raw_model, dict) else {}
                latest[d["device_id"]] = {"device_id": d["device_id"], "state": d["state"],
                                          "state_ts": rows[msg.msg_id]["ts"], "state_received_at": item.received_at,
                                          "model_name": _str(model.get("name"), 128),
                                          "model_version": _str(model.get("version"), 64)}
            else:
                latest[d["device_id"]] = {"device_id": d["device_id"], "health_ts": rows[msg.msg_id]["ts"],
                                          "health_received_at": item.received_at, "health": dumps(d)}
        if latest:
            dev = t.devices
            ins = self.db.insert_upsert(dev)
            stamp = "state_received_at" if kind == "status" else "health_received_at"
            cols = [c for c in next(iter(latest.values())) if c != "device_id"]
            # the last will carries no model: keep the one an earlier status told
            set_ = {c: func.coalesce(ins.excluded[c], dev.c[c]) if c.startswith("model_") else ins.excluded[c]
                    for c in cols}
            conn.execute(ins.on_conflict_do_update(
                index_elements=["device_id"], set_=set_,
                where=or_(dev.c[stamp].is_(None), ins.excluded[stamp] >= dev.c[stamp])),
                [latest[k] for k in sorted(latest)])
        return out


def _str(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None
