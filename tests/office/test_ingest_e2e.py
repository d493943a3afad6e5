"""Ingest end to end, with real processes, a real Mosquitto and real databases.

- SQLite: one worker stores a fleet's detections, status, health, command responses and a snapshot,
  quarantines hostile messages and keeps going; stats and exports reflect everything.
- Persistent session: what is published while no worker runs arrives when it starts again.
- Faults (PostgreSQL/PostGIS): two workers on one shared subscription, a few thousand QoS 1
  detections, one worker SIGKILLed mid-stream and restarted: every message exactly once, no
  sequence gap, nothing in quarantine but the hostile messages injected on purpose.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from office import query
from office.cli import main
from office.store.database import Database
from tests.helpers import wait_until
from tests.mosquitto import MosquittoBroker
from tests.office.fleet import IngestProcess, Outgoing, Publisher, fleet_detections, hostile, side_traffic, snapshot


def stored(url: str) -> int:
    db = Database.open(url, create=False)
    try:
        with db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(db.t.detection_messages)).scalar_one())
    finally:
        db.close()


def stored_ids(url: str) -> list[str]:
    db = Database.open(url, create=False)
    try:
        with db.connect() as conn:
            return [r[0] for r in conn.execute(select(db.t.detection_messages.c.msg_id))]
    finally:
        db.close()


def quarantine_reasons(url: str) -> list[str]:
    db = Database.open(url, create=False)
    try:
        with db.connect() as conn:
            return sorted(r[0] for r in conn.execute(select(db.t.quarantine.c.reason)))
    finally:
        db.close()


def stats_json(url: str, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["stats", "--db", url, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_sqlite_end_to_end(office_broker: MosquittoBroker, sqlite_url: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    detections = fleet_detections(2, 40.0, seed=1)
    first = detections[0].msg
    assert first is not None
    side = side_traffic("van-01") + side_traffic("van-02")
    pic = snapshot("van-01", 1, first["frame"]["index"], first["ts"], "c" * 32)
    bad = hostile("van-01", detections[0].payload)
    worker = IngestProcess(office_broker.url, sqlite_url, "office-e2e", tmp_path / "ingest.log",
                           "--refresh-interval", "1").start()
    worker.wait_subscribed()
    pub = Publisher(office_broker.host, office_broker.port)
    half = len(detections) // 2
    pub.publish(detections[:half] + bad + side)
    pub.publish([pic], qos=0)
    pub.publish(detections[half:])        # after the hostile ones: ingest must still be storing
    pub.close()
    wait_until(lambda: stored(sqlite_url) == len(detections), 120, worker.describe)
    wait_until(lambda: len(quarantine_reasons(sqlite_url)) == len(bad), 30, worker.describe)
    assert worker.alive()
    assert worker.stop() == 0, worker.describe()

    s = stats_json(sqlite_url, capsys)
    assert s["messages"] == len(detections) and s["devices"] == 2 and s["seq_gaps"] == 0
    assert s["quarantined"] == len(bad) and s["duplicates_ignored"] == 0
    assert (s["status_messages"], s["health_messages"], s["cmd_responses"], s["snapshots"]) == (2, 2, 2, 1)
    assert s["cracks"] > 10 and s["segments"] >= 8 and s["observations_pending"] == 0
    reasons = quarantine_reasons(sqlite_url)
    assert any(r.startswith("not JSON") for r in reasons)
    assert any(r.startswith("not a JSON object") for r in reasons)
    assert any(r.startswith("oversized") for r in reasons)
    assert any(r.startswith("schema: crack_count") for r in reasons)
    assert any(r.startswith("unsupported schema_version 3") for r in reasons)
    assert sorted(stored_ids(sqlite_url)) == sorted(d.msg["msg_id"] for d in detections if d.msg)
    db = Database.open(sqlite_url, create=False)
    assert any(c["best_snapshot_id"] for c in query.cracks(db))
    db.close()


def test_messages_sent_while_no_worker_runs_arrive_when_it_starts(office_broker: MosquittoBroker, sqlite_url: str,
                                                                  tmp_path: Path) -> None:
    detections = fleet_detections(1, 30.0, seed=2)
    worker = IngestProcess(office_broker.url, sqlite_url, "office-durable", tmp_path / "ingest.log",
                           "--refresh-interval", "0").start()
    worker.wait_subscribed()          # the broker now has the worker's session and subscriptions
    assert worker.stop() == 0
    pub = Publisher(office_broker.host, office_broker.port)
    pub.publish(detections)
    pub.close()
    assert stored(sqlite_url) == 0
    worker.start()
    wait_until(lambda: stored(sqlite_url) == len(detections), 120, worker.describe)
    assert worker.stop() == 0
    assert "session present: True" in worker.log_path.read_text()


def test_two_workers_one_killed_mid_stream_lose_nothing(office_broker: MosquittoBroker, pg_url: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    detections = fleet_detections(4, 280.0, seed=3)       # about 3,000 messages from 4 vehicles
    assert len(detections) > 2500
    bad = hostile("van-02", detections[0].payload)
    workers = [IngestProcess(office_broker.url, pg_url, f"office-{i}", tmp_path / f"ingest-{i}.log",
                             "--refresh-interval", "1", "--batch-max", "200") for i in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.wait_subscribed()

    def describe() -> str:
        return "\n".join(w.describe() for w in workers)

    third = len(detections) // 3
    stream: list[Outgoing] = detections[:third] + bad + detections[third:]
    pub = Publisher(office_broker.host, office_broker.port, window=100)
    done = threading.Event()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            pub.publish(stream, rate=800.0)     # a stream of a few seconds: the kill lands inside it
            pub.flush(timeout=240)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=publish, daemon=True).start()
    wait_until(lambda: stored(pg_url) >= third, 180, describe)
    assert not done.is_set() or stored(pg_url) < len(detections), "the kill must land mid-stream"
    workers[0].kill9()                                    # no clean shutdown, no flush, no acks
    workers[0].start()
    workers[0].wait_subscribed()
    assert done.wait(240), "publisher did not finish"
    assert not errors, errors
    pub.client.disconnect()
    wait_until(lambda: stored(pg_url) == len(detections), 240, describe)
    assert all(w.alive() for w in workers), describe()
    for w in workers:
        assert w.stop() == 0, w.describe()
    assert "session present: True" in workers[0].log_path.read_text(), "the restarted worker resumed its session"

    ids = stored_ids(pg_url)
    assert len(ids) == len(set(ids)) == len(detections)
    assert set(ids) == {d.msg["msg_id"] for d in detections if d.msg}
    s = stats_json(pg_url, capsys)
    assert s["messages"] == len(detections) and s["devices"] == 4
    assert s["seq_gaps"] == 0
    assert s["quarantined"] == len(bad)
    assert s["observations_pending"] == 0 and s["cracks"] > 100 and s["segments"] > 100
    # what the kill cost: messages stored but not acknowledged were re-delivered and ignored
    print(f"duplicates ignored after the kill: {s['duplicates_ignored']}")


def test_nothing_is_acknowledged_before_it_is_committed(office_broker: MosquittoBroker, tmp_path: Path) -> None:
    """The database goes away under a running worker, which then receives messages it cannot store
    and is SIGKILLed: had it acknowledged anything before a commit, those messages would be lost."""
    from tests.postgres import PostgresServer, missing_reason

    if missing_reason():
        pytest.skip(missing_reason())
    detections = fleet_detections(1, 60.0, seed=4)
    first, rest = detections[:60], detections[60:]
    server = PostgresServer().start()
    try:
        url = server.create_database("outage")
        worker = IngestProcess(office_broker.url, url, "office-outage", tmp_path / "ingest.log",
                               "--refresh-interval", "0").start()
        worker.wait_subscribed()
        pub = Publisher(office_broker.host, office_broker.port)
        pub.publish(first)
        wait_until(lambda: stored(url) == len(first), 60, worker.describe)
        server.stop()                                            # the database is gone
        pub.publish(rest)
        pub.flush()                                              # the broker has them all
        wait_until(lambda: "retrying" in worker.log_path.read_text(), 60, worker.describe)
        worker.kill9()                                           # holding messages it could not store
        server.start()
        worker.start()
        wait_until(lambda: stored(url) == len(detections), 120, worker.describe)
        assert worker.stop() == 0
        assert sorted(stored_ids(url)) == sorted(d.msg["msg_id"] for d in detections if d.msg)
        pub.close()
    finally:
        server.cleanup()


def test_tls_and_password(make_broker, sqlite_url: str, tmp_path: Path) -> None:  # noqa: ANN001 - fixture
    """mqtts:// with the broker's CA, a username and a password file (in-process worker)."""
    import ssl

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    from office.config import IngestConfig
    from office.ingest.worker import IngestWorker

    broker = make_broker(tls=True, users={"office": "s3cret", "van-01": "v4n"},
                         extra_config="max_queued_messages 0")
    assert broker.tls_files is not None
    pw = tmp_path / "mqtt.pw"
    pw.write_text("s3cret\n")
    cfg = IngestConfig(mqtt_url=broker.url, db_url=sqlite_url, client_id="office-tls", username="office",
                       password_file=pw, ca_file=broker.tls_files.ca_cert, refresh_interval_s=0)
    worker = IngestWorker(cfg)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.receiver.subscribed.wait(30), worker.receiver.last_error
        detections = fleet_detections(1, 10.0, seed=5)
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="van-01", protocol=MQTTProtocolVersion.MQTTv5)
        pub.tls_set(ca_certs=str(broker.tls_files.ca_cert), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        pub.username_pw_set("van-01", "v4n")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for d in detections:
            pub.publish(d.topic, d.payload, qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        wait_until(lambda: worker.stats.detections == len(detections), 60, lambda: str(worker.stats))
    finally:
        worker.stop()
        thread.join(timeout=60)
    assert stored(sqlite_url) == len(detections)
