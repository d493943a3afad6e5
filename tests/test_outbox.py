"""The SQLite outbox on its own: order, persistence, bounds, sequence numbers, WAL, locking."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_agent.comms.outbox import Outbox, OutboxError


class FakeClock:
    """Outbox ages are wall-clock seconds; tests move time explicitly instead of sleeping."""

    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def payload_of(tag: str, size: int = 0):
    return lambda seq: f"{tag}:{seq}".encode() + b"x" * size


def test_wal_mode_and_full_sync(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # a second connection sees WAL as the file's persistent mode
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_fifo_order_and_peek_window(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        entries = [box.add("detections", "t/d", payload_of("d")) for _ in range(10)]
        assert [e.seq for e in entries] == list(range(1, 11))
        first = box.peek(limit=4)
        assert [e.seq for e in first] == [1, 2, 3, 4]
        nxt = box.peek(after_id=first[-1].id, limit=100)
        assert [e.seq for e in nxt] == list(range(5, 11))
        assert nxt[0].payload == b"d:5" and nxt[0].topic == "t/d" and nxt[0].qos == 1


def test_ack_deletes_only_acknowledged_rows(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        ids = [box.add("detections", "t", payload_of("d")).id for _ in range(5)]
        assert box.ack([ids[1], ids[3], 999_999]) == 2
        assert [e.seq for e in box.peek()] == [1, 3, 5]
        st = box.stats()
        assert st.depth == 3 and st.acked == 2 and st.added == 5 and st.bytes == 9


def test_rows_and_seq_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    for _ in range(3):
        box.add("detections", "t", payload_of("d"), props={"content_type": "application/json"}, msg_id="m")
    box.add("other", "t2", payload_of("o"))
    assert box.next_seq("health") == 1
    box.ack([box.peek(limit=1)[0].id])
    box.close()

    with Outbox(path) as box:
        rows = box.peek()
        assert [(e.stream, e.seq) for e in rows] == [("detections", 2), ("detections", 3), ("other", 1)]
        assert rows[0].props == {"content_type": "application/json"} and rows[0].msg_id == "m"
        # numbering continues, contiguous per stream, across the restart
        assert box.add("detections", "t", payload_of("d")).seq == 4
        assert box.add("other", "t2", payload_of("o")).seq == 2
        assert box.next_seq("health") == 2
        assert box.last_seq("detections") == 4 and box.last_seq("never") == 0


def _child_adds_then_dies(path: str, n: int) -> None:
    import os

    box = Outbox(path)
    for _ in range(n):
        box.add("detections", "t", payload_of("d"))
    os._exit(0)  # no close(), no checkpoint: like kill -9 right after add() returned


def test_rows_survive_a_process_that_never_closes(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    proc = multiprocessing.get_context("spawn").Process(target=_child_adds_then_dies, args=(str(path), 7))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    with Outbox(path) as box:  # the dead process's lock is gone with it
        assert [e.seq for e in box.peek()] == list(range(1, 8))


def test_max_messages_drops_oldest_and_counts_persistently(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, max_messages=5) as box:
        for _ in range(8):
            box.add("detections", "t", payload_of("d"))
        assert [e.seq for e in box.peek()] == [4, 5, 6, 7, 8]
        assert box.dropped == 3 and len(box) == 5
    with Outbox(path, max_messages=5) as box:
        assert box.dropped == 3
        box.add("detections", "t", payload_of("d"))
        assert box.dropped == 4 and [e.seq for e in box.peek()][0] == 5


def test_max_bytes_drops_oldest_and_refuses_a_single_oversized_message(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=100) as box:
        for _ in range(4):
            box.add("detections", "t", payload_of("d", size=27))  # 30 bytes each
        assert [e.seq for e in box.peek()] == [2, 3, 4]
        assert box.stats().bytes == 90 and box.dropped == 1
        assert box.add("detections", "t", payload_of("d", size=200)) is None
        assert box.dropped == 2
        assert [e.seq for e in box.peek()] == [2, 3, 4]  # nothing evicted for it
        assert box.add("detections", "t", payload_of("d")).seq == 6  # its seq stays used: the receiver sees a gap


def test_max_age_prunes_and_reports_oldest_age(tmp_path: Path) -> None:
    clock = FakeClock()
    with Outbox(tmp_path / "o.db", max_age_s=60, clock=clock) as box:
        box.add("detections", "t", payload_of("d"))
        clock.t += 30
        box.add("detections", "t", payload_of("d"))
        clock.t += 20
        assert box.stats().oldest_age_s == pytest.approx(50)
        assert box.prune() == 0
        clock.t += 15  # first is 65 s old, second 35 s
        assert box.prune() == 1
        assert [e.seq for e in box.peek()] == [2] and box.dropped == 1
        assert box.stats().oldest_age_s == pytest.approx(35)
    clock.t += 100
    with Outbox(tmp_path / "o.db", max_age_s=60, clock=clock) as box:  # pruned on open too
        assert len(box) == 0 and box.dropped == 2 and box.stats().oldest_age_s is None


def test_concurrent_adds_get_unique_contiguous_seq(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        def worker() -> None:
            for _ in range(25):
                box.add("detections", "t", payload_of("d"))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = box.peek(limit=1000)
        assert [e.seq for e in rows] == list(range(1, 101))  # row order is seq order
        assert [e.payload for e in rows] == [f"d:{i}".encode() for i in range(1, 101)]


def test_failed_build_rolls_back_the_seq(tmp_path: Path) -> None:
    def broken(seq: int) -> bytes:
        raise ValueError("not serializable")

    with Outbox(tmp_path / "o.db") as box:
        with pytest.raises(ValueError):
            box.add("detections", "t", broken)
        assert box.add("detections", "t", payload_of("d")).seq == 1
        assert len(box) == 1


def test_second_owner_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db"):
        with pytest.raises(OutboxError, match="in use by another process"):
            Outbox(tmp_path / "o.db")
    Outbox(tmp_path / "o.db").close()  # free again once closed


def test_unusable_file_is_moved_aside_and_a_fresh_outbox_starts(tmp_path: Path, caplog) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with caplog.at_level("ERROR"), Outbox(path) as box:
        assert box.stats().lost_files == 1
        assert box.add("detections", "t", payload_of("d")).seq == 1
    aside = list(tmp_path.glob("o.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not sqlite")
    assert "moved aside" in caplog.text and "lost" in caplog.text


def test_damaged_database_keeps_its_seq_when_the_counters_can_be_read(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        for _ in range(3):
            box.add("detections", "t", payload_of("d"))
    db = sqlite3.connect(path)
    db.execute("DROP TABLE messages")  # the counters survive, the queue does not: unusable as an outbox
    db.execute("CREATE TABLE messages (nonsense)")
    db.commit()
    db.close()
    with Outbox(path) as box:
        st = box.stats()
        assert st.lost_files == 1
        assert box.add("detections", "t", payload_of("d")).seq == 4  # the office sees the loss as a gap


def test_changed_bytes_in_a_row_are_quarantined_and_never_returned(tmp_path: Path, caplog) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        for _ in range(3):
            box.add("detections", "t", lambda seq: b'{"seq": %d, "cracks": []}' % seq)
    db = sqlite3.connect(path)
    db.execute("UPDATE messages SET payload = ? WHERE seq = 2", (b'{"seq": 2, "cracks": [}',))
    db.commit()
    db.close()
    with caplog.at_level("ERROR"), Outbox(path) as box:
        assert [e.seq for e in box.peek()] == [1, 3]
        st = box.stats()
        assert st.corrupt == 1 and st.depth == 2
        (seq, reason), = box._db.execute("SELECT seq, reason FROM quarantine").fetchall()
        assert seq == 2 and ("checksum" in reason or "bytes stored" in reason)
    assert "quarantined, not published" in caplog.text


def test_schema_1_outbox_is_migrated_and_its_rows_vouched_for(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, seq INTEGER NOT NULL,
            msg_id TEXT, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL,
            props TEXT, created REAL NOT NULL, size INTEGER NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO messages(stream, seq, topic, payload, qos, retain, created, size)
            VALUES('detections', 7, 't', CAST('old' AS BLOB), 1, 0, CAST(strftime('%s', 'now') AS REAL), 3);
        INSERT INTO counters VALUES('seq:detections', 7);
        PRAGMA user_version=1;
    """)
    db.close()
    with Outbox(path) as box:
        assert [(e.seq, e.payload) for e in box.peek()] == [(7, b"old")]
        assert box.add("detections", "t", payload_of("d")).seq == 8


def test_closed_outbox_raises(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.add("detections", "t", payload_of("d"))
