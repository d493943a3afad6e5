"""The store, on SQLite and on PostgreSQL/PostGIS: idempotent batches, sequence gaps that fill in any
order, quarantine, the latest state per vehicle, snapshots, and what QGIS sees."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from office import query
from office.ingest.rows import Incoming
from office.ingest.writer import BatchWriter, TransientDatabaseError
from office.refresh import refresh
from office.store.database import Database
from office.synthetic import Drive, StraightTrack, cracks_along, encode, simulate
from tests.office.fleet import ORIGIN, envelope_message, side_traffic, snapshot
from tests.postgres import free_port

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def drive(device: str = "van-1", length: float = 30.0, seed: int = 0) -> list[dict[str, Any]]:
    track = StraightTrack(heading_deg=20.0, length_m=length)
    return list(simulate(Drive(device, track, ORIGIN, seed=seed, every_frame=True),
                         cracks_along(track, ORIGIN, 3.0, seed=seed)))


def incoming(msgs: list[dict[str, Any]], *, kind: str = "detections", retain: bool = False) -> list[Incoming]:
    return [Incoming(f"crackseg/{m['device_id']}/{kind}", encode(m), 1, i + 1, retain, NOW)
            for i, m in enumerate(msgs)]


def raw(topic: str, payload: bytes, retain: bool = False, **kw: Any) -> Incoming:
    return Incoming(topic, payload, 1, 1, retain, NOW, **kw)


@pytest.fixture
def db(db_url: str) -> Database:
    database = Database.open(db_url)
    yield database
    database.close()


def test_a_message_stored_twice_is_one_row(db: Database) -> None:
    msgs = drive()
    a, b = BatchWriter(db, "worker-a"), BatchWriter(db, "worker-b")
    first = a.write(incoming(msgs))
    assert first.detections == len(msgs) and first.duplicates == 0
    again = b.write(incoming(msgs[:5] + msgs[:2]))      # redelivered to the other worker, twice in one batch
    assert again.detections == 0 and again.duplicates == 7
    s = query.stats(db)
    assert s["messages"] == len(msgs) and s["duplicates_ignored"] == 7 and s["seq_gaps"] == 0
    with db.connect() as conn:
        n_obs = conn.execute(select(text("count(*)")).select_from(db.t.crack_observations)).scalar()
    assert n_obs == sum(len(m["cracks"]) for m in msgs), "observations of a duplicate must not be added"


def test_sequence_gaps_fill_in_whatever_the_order(db: Database) -> None:
    msgs = drive(length=8.0)[:10]
    assert [m["seq"] for m in msgs] == list(range(1, 11))
    a, b = BatchWriter(db, "a"), BatchWriter(db, "b")
    a.write(incoming([msgs[i - 1] for i in (10, 1, 2, 3, 6, 7)]))
    assert query.stats(db)["seq_gaps"] == 4
    assert [(g["first_missing"], g["last_missing"]) for g in query.seq_gaps(db, "van-1")] == [(4, 5), (8, 9)]
    b.write(incoming([msgs[8 - 1]]))
    a.write(incoming([msgs[9 - 1], msgs[4 - 1]]))
    assert query.stats(db)["seq_gaps"] == 1
    b.write(incoming([msgs[5 - 1], msgs[5 - 1]]))     # the last gap, delivered twice
    s = query.stats(db)
    assert s["seq_gaps"] == 0 and s["messages"] == 10 and s["duplicates_ignored"] == 1


def test_side_traffic_history_and_latest_state(db: Database) -> None:
    w = BatchWriter(db, "w")
    status, health, response = side_traffic("van-3")
    out = w.write([raw(status.topic, status.payload, retain=True), raw(health.topic, health.payload),
                   raw(response.topic, response.payload)])
    assert out.stored == 3 and out.quarantined == 0
    # the retained status comes again on every (re)subscription: stored once, not a "duplicate"
    out = w.write([raw(status.topic, status.payload, retain=True)])
    assert out.stored == 0 and out.duplicates == 0
    # ...and every worker gets every status (not shared): the other worker's copy is not one either
    out = BatchWriter(db, "other").write([raw(status.topic, status.payload)])
    assert out.stored == 0 and out.duplicates == 0
    will = envelope_message("van-3", 0, {"state": "offline"})
    w.write([raw(status.topic, will)])
    s = query.stats(db)
    assert (s["status_messages"], s["health_messages"], s["cmd_responses"], s["devices"]) == (2, 1, 1, 1)
    with db.connect() as conn:
        dev = conn.execute(select(db.t.devices)).one()
        resp = conn.execute(select(db.t.cmd_responses)).one()
    assert dev.state == "offline" and dev.model_name == "crackseg-ref", "the will carries no model: keep the last"
    assert dev.health["uptime_s"] == 12.5
    assert (resp.command, resp.request_id, resp.ok) == ("snapshot", "r1", True)


def test_quarantine_keeps_reason_topic_and_a_truncated_payload(db: Database) -> None:
    w = BatchWriter(db, "w", max_payload_bytes=4096, quarantine_keep_bytes=100)
    bad = [raw("crackseg/van-1/detections", b"{broken"), raw("crackseg/van-1/detections", b"x" * 5000),
           raw("crackseg/van-1/health", b"[]")]
    out = w.write(bad + [raw("crackseg/van-1/detections", b"{broken")])
    assert out.quarantined == 4 and out.stored == 0
    with db.connect() as conn:
        rows = {r.reason.split(":")[0]: r for r in conn.execute(select(db.t.quarantine))}
    assert set(rows) == {"not JSON", "oversized", "not a JSON object but list"}
    assert rows["not JSON"].times == 2 and rows["not JSON"].topic == "crackseg/van-1/detections"
    assert rows["oversized"].size_bytes == 5000 and len(rows["oversized"].payload) == 100
    assert rows["oversized"].truncated
    assert query.stats(db)["quarantined"] == 3
    # a NUL in a field the quarantine row keeps as text (PostgreSQL text cannot hold one)
    out = w.write([raw("crackseg/van-1/detections", b'{"schema_version": 7, "device_id": "van\\u0000x", '
                                                        b'"msg_id": "\\u0000"}')])
    assert out.quarantined == 1 and query.stats(db)["quarantined"] == 4


def test_snapshots_are_stored_and_become_the_best_picture_of_a_crack(db: Database) -> None:
    msgs = [m for m in drive() if m["cracks"]]
    target = max(msgs, key=lambda m: len(m["cracks"]))
    w = BatchWriter(db, "w")
    w.write(incoming(msgs))
    refresh(db)                                 # snapshot after the inventory exists: still linked
    snap = snapshot("van-1", 1, target["frame"]["index"], target["ts"], "5" * 32)
    w.write([Incoming(snap.topic, snap.payload, 0, 0, False, NOW, 0, dict(snap.user_properties), snap.content_type)])
    refresh(db)
    with db.connect() as conn:
        sid = conn.execute(select(db.t.snapshots.c.id)).scalar_one()
        pictured = {r[0] for r in conn.execute(select(db.t.cracks.c.id).where(db.t.cracks.c.best_snapshot_id == sid))}
        in_frame = {r[0] for r in conn.execute(select(db.t.crack_observations.c.crack_id).where(
            db.t.crack_observations.c.frame_index == target["frame"]["index"]))}
    assert in_frame and in_frame <= pictured   # others may get it too: observed within 1 s of it
    ctype, jpeg = query.snapshot(db, sid) or ("", b"")
    assert ctype == "image/jpeg" and jpeg == snap.payload


def test_an_unreachable_database_is_transient_and_acknowledges_nothing() -> None:
    dead = Database(create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
                                  connect_args={"connect_timeout": 2}))
    with pytest.raises(TransientDatabaseError):
        BatchWriter(dead, "w").write(incoming(drive(length=4.0)[:2]))


def test_a_message_the_database_refuses_is_quarantined_alone(pg_url: str) -> None:
    """PostgreSQL's jsonb has no NUL character: such a message cannot be stored; the rest of its batch is."""
    db = Database.open(pg_url)
    msgs = drive(length=10.0)
    poisoned = dict(msgs[3])
    poisoned["frame"] = dict(poisoned["frame"], source="cam\u0000era")
    batch = incoming(msgs[:3]) + [Incoming("crackseg/van-1/detections", json.dumps(poisoned).encode(), 1, 99,
                                           False, NOW)] + incoming(msgs[4:])
    out = BatchWriter(db, "w").write(batch)
    assert out.detections == len(msgs) - 1 and out.quarantined == 1
    with db.connect() as conn:
        reason = conn.execute(select(db.t.quarantine.c.reason)).scalar_one()
    assert reason.startswith("database refused it")
    db.close()


def test_postgis_layers_for_qgis(pg_url: str) -> None:
    db = Database.open(pg_url)
    BatchWriter(db, "w").write(incoming(drive()))
    refresh(db)
    with db.connect() as conn:
        cols = {(r.f_table_name, r.f_geometry_column): (r.type, r.srid) for r in conn.execute(
            text("SELECT f_table_name, f_geometry_column, type, srid FROM geometry_columns"))}
        gist = {r[0] for r in conn.execute(text("SELECT tablename FROM pg_indexes WHERE indexdef ILIKE '%gist%'"))}
        valid = conn.execute(text("SELECT bool_and(ST_IsValid(geom)) FROM segments")).scalar()
        srid = conn.execute(text("SELECT DISTINCT ST_SRID(geom) FROM cracks")).scalar_one()
    assert cols[("cracks", "geom")] == ("LINESTRING", 4326)
    assert cols[("segments", "geom")] == ("LINESTRING", 4326)
    assert cols[("crack_observations", "geom")] == ("LINESTRING", 4326)
    assert cols[("detection_messages", "geom")] == ("POINT", 4326)
    assert {"cracks", "segments", "crack_observations", "detection_messages"} <= gist
    assert valid and srid == 4326
    db.close()


def test_sqlite_runs_in_wal_mode_with_full_sync(sqlite_url: str) -> None:
    db = Database.open(sqlite_url)
    with db.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2    # FULL
    db.close()


def test_times_are_aware_utc_on_both_backends(db: Database) -> None:
    msgs = drive(length=4.0)[:1]
    BatchWriter(db, "w").write(incoming(msgs))
    with db.connect() as conn:
        ts = conn.execute(select(db.t.detection_messages.c.ts)).scalar_one()
    expected = datetime.fromisoformat(msgs[0]["ts"].replace("Z", "+00:00"))
    assert ts == expected and ts.utcoffset() == timedelta(0)
