"""SQLite store-and-forward outbox: a detection is on disk before it is published.

Why SQLite in WAL mode with ``synchronous=FULL``: a row must survive ``kill -9`` and a power
cut (ignition off) once ``add`` returns, because the message may already be on its way to the
broker; if the row and its sequence number were lost, the next start would reuse that ``seq``
for another message. WAL keeps the per-message fsync cheap (one append, no journal rewrite).

Rows are deleted only by :meth:`Outbox.ack` (the broker's PUBACK) or by the bounds (max rows,
bytes, age): the oldest go first and are counted in a persistent ``dropped`` counter. Row ids
(AUTOINCREMENT, never reused) give the send order, which is the ``seq`` order per topic.

One process owns an outbox at a time (an ``flock`` on ``<file>.lock``), since two agents
draining the same file would both send every message.

Integrity: every row stores the sha256 of its payload. A row whose bytes no longer match
(a bad sector, a hand edit) is moved to the ``quarantine`` table and counted (``corrupt``),
never published: the office must not receive a detection the agent did not write. A file
that is not a usable database at all would stop every start under systemd, so it is moved
aside (``<file>.corrupt-<time>``) with an error log line saying how many messages it held
as far as can be read, counted in ``lost_files``, and a fresh outbox starts; the sequence
counters are carried over when they can still be read, so the office sees the loss as a gap.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.comms.outbox_db import (
    UnusableDatabase,
    bump,
    counter,
    open_database,
    payload_checksum,
    row_problem,
    salvage,
    set_counter,
    take_file_lock,
    transaction,
)
from edge_agent.errors import UserError

log = logging.getLogger(__name__)

class OutboxError(UserError, RuntimeError):
    """The outbox file cannot be used; the message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued message, exactly as it will be (re)sent."""

    id: int
    stream: str
    seq: int
    msg_id: str | None
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: dict[str, Any] | None
    created: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_age_s: float | None
    dropped: int
    added: int
    acked: int
    corrupt: int = 0  # rows whose payload no longer matched its checksum (quarantined, never sent)
    lost_files: int = 0  # unusable outbox files moved aside at start


class Outbox:
    """Thread-safe persistent queue with per-stream persistent sequence numbers."""

    def __init__(self, path: str | Path, *, max_messages: int = 200_000, max_bytes: int = 256 * 1024**2,
                 max_age_s: float = 7 * 24 * 3600.0, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.RLock()
        self._added = 0
        self._acked = 0
        self._lock_fd = self._take_file_lock()
        try:
            self._db: sqlite3.Connection | None = self._open_or_recover()
            self._depth, self._bytes = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
        except BaseException:
            self._release_file_lock()
            raise
        self.prune()

    @classmethod
    def from_config(cls, cfg: Any, path: str | Path) -> Outbox:
        """From an ``OutboxConfig`` (edge_agent.config.mqtt) and the resolved file path."""
        return cls(path, max_messages=cfg.max_messages, max_bytes=cfg.max_bytes, max_age_s=cfg.max_age_s)

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"outbox {self.path} is closed")
        return self._db

    # -- opening -------------------------------------------------------------------------
    def _take_file_lock(self) -> int | None:
        try:
            return take_file_lock(self.path)
        except BlockingIOError:
            raise OutboxError(f"outbox {self.path} is in use by another process; run one agent per outbox "
                              "(stop the other one or give this one its own state_dir)") from None
        except OSError as exc:
            raise OutboxError(f"outbox {self.path}: cannot create its folder or lock file ({exc.strerror}); "
                              "check state_dir and its permissions") from None

    def _release_file_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _open(self) -> sqlite3.Connection:
        try:
            return open_database(self.path)
        except ValueError as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from None

    def _transaction(self, db: sqlite3.Connection | None = None):  # noqa: ANN202 - a context manager
        return transaction(db if db is not None else self._conn)

    def _open_or_recover(self) -> sqlite3.Connection:
        """Open the outbox; a file that is not a usable database is moved aside and replaced."""
        try:
            return self._open()
        except UnusableDatabase as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            held, counters = salvage(self.path)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, f"{aside}{suffix}")
            log.error("outbox %s is not a usable SQLite database (%s): moved aside to %s and started a fresh one; "
                      "%s queued message(s) in it are lost (counted in health outbox.lost_files)", self.path,
                      exc.reason, aside, held if held is not None else "an unknown number of")
            db = self._open()
            with self._transaction(db):
                for name, value in counters.items():
                    if name.startswith("seq:") or name in ("dropped", "corrupt"):
                        set_counter(db, name, value)
                bump(db, "lost_files")
                if held:
                    bump(db, "dropped", held)
            return db

    def close(self) -> None:
        """Checkpoint and close; the file stays a valid outbox for the next start."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # pragma: no cover - best effort, the WAL is replayed on open
                log.warning("outbox %s: checkpoint failed on close: %s", self.path, exc)
            self._db.close()
            self._db = None
            self._release_file_lock()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._db is None

    # -- sequence numbers ----------------------------------------------------------------
    def next_seq(self, stream: str) -> int:
        """Allocate (and persist) the next ``seq`` of a stream whose messages are not queued."""
        with self._lock, self._transaction() as db:
            return bump(db, f"seq:{stream}")

    def last_seq(self, stream: str) -> int:
        """The last ``seq`` allocated on a stream (0 if none)."""
        with self._lock:
            return counter(self._conn, f"seq:{stream}")

    # -- queue ---------------------------------------------------------------------------
    def add(self, stream: str, topic: str, build: Callable[[int], bytes], *, qos: int = 1, retain: bool = False,
            props: dict[str, Any] | None = None, msg_id: str | None = None) -> OutboxEntry | None:
        """Allocate the stream's next ``seq``, build the payload with it and store it, atomically.

        Returns None when the message alone exceeds ``max_bytes``: it is counted as dropped
        (its ``seq`` is used, so the receiver sees the gap) instead of evicting everything else.
        """
        with self._lock:
            now = self._clock()
            try:
                with self._transaction() as db:
                    seq = bump(db, f"seq:{stream}")
                    payload = bytes(build(seq))
                    size = len(payload)
                    if size > self.max_bytes:
                        bump(db, "dropped")
                        log.warning("outbox: dropped %s seq %d: %d bytes is more than outbox.max_bytes %d", stream,
                                    seq, size, self.max_bytes)
                        return None
                    cur = db.execute(
                        "INSERT INTO messages(stream, seq, msg_id, topic, payload, qos, retain, props, created, size, "
                        "checksum) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (stream, seq, msg_id, topic, payload, qos, int(retain),
                         json.dumps(props) if props else None, now, size, payload_checksum(payload)))
                    row_id = int(cur.lastrowid or 0)
                    self._depth += 1
                    self._bytes += size
                    self._enforce_bounds_locked(db)
            except BaseException:
                self._recount()
                raise
            self._added += 1
            return OutboxEntry(row_id, stream, seq, msg_id, topic, payload, qos, bool(retain), props, now)

    def _recount(self) -> None:
        if self._db is not None:
            self._depth, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()

    def _enforce_bounds_locked(self, db: sqlite3.Connection) -> None:
        """Delete the oldest rows until count and bytes are within bounds (inside a transaction)."""
        if self._depth <= self.max_messages and self._bytes <= self.max_bytes:
            return
        excess_rows = max(0, self._depth - self.max_messages)
        excess_bytes = max(0, self._bytes - self.max_bytes)
        n, freed, last_id = 0, 0, None
        for row_id, size in db.execute("SELECT id, size FROM messages ORDER BY id"):
            if n >= excess_rows and freed >= excess_bytes:
                break
            n, freed, last_id = n + 1, freed + size, row_id
        if last_id is None:
            return
        db.execute("DELETE FROM messages WHERE id <= ?", (last_id,))
        bump(db, "dropped", n)
        self._depth -= n
        self._bytes -= freed
        log.warning("outbox full: dropped the %d oldest message(s) (%d bytes); raise outbox.max_messages/"
                    "max_bytes or fix the broker link", n, freed)

    def prune(self) -> int:
        """Drop messages older than ``max_age_s``; returns how many."""
        with self._lock:
            head = self._conn.execute("SELECT created FROM messages ORDER BY id LIMIT 1").fetchone()
            cutoff = self._clock() - self.max_age_s
            if head is None or head[0] >= cutoff:
                return 0
            with self._transaction() as db:
                n, freed = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE created < ?",
                                      (cutoff,)).fetchone()
                db.execute("DELETE FROM messages WHERE created < ?", (cutoff,))
                bump(db, "dropped", n)
            self._depth -= n
            self._bytes -= freed
            if n:
                log.warning("outbox: dropped %d message(s) older than outbox.max_age_s=%gs", n, self.max_age_s)
            return int(n)

    def peek(self, after_id: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """The oldest ``limit`` intact messages with ``id > after_id``, in send order.

        A row whose payload no longer matches its checksum is quarantined on the way (counted
        as ``corrupt``, logged once) and never returned, so it is never published.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, stream, seq, msg_id, topic, payload, qos, retain, props, created, size, checksum "
                "FROM messages WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
            good, bad = [], []
            for r in rows:
                payload = bytes(r[5])
                reason = row_problem(payload, r[10], r[11], r[8])
                if reason:
                    bad.append((r, payload, reason))
                    continue
                good.append(OutboxEntry(r[0], r[1], r[2], r[3], r[4], payload, r[6], bool(r[7]),
                                        json.loads(r[8]) if r[8] else None, r[9]))
            if bad:
                self._quarantine(bad)
        return good

    def _quarantine(self, bad: list[tuple[Any, bytes, str]]) -> None:
        now = self._clock()
        with self._transaction() as db:
            for r, payload, reason in bad:
                db.execute("INSERT OR REPLACE INTO quarantine(id, stream, seq, msg_id, payload, reason, quarantined) "
                           "VALUES(?, ?, ?, ?, ?, ?, ?)", (r[0], r[1], r[2], r[3], payload[:65536], reason, now))
                db.execute("DELETE FROM messages WHERE id=?", (r[0],))
                bump(db, "corrupt")
        for r, _payload, reason in bad:
            log.error("outbox: %s seq %s (row %d) is damaged (%s): quarantined, not published", r[1], r[2], r[0],
                      reason)
        self._recount()

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged messages (one transaction for a batch); unknown ids are ignored."""
        id_list = list(ids)
        if not id_list:
            return 0
        with self._lock:
            n, freed = 0, 0
            with self._transaction() as db:
                for start in range(0, len(id_list), 500):
                    chunk = id_list[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    c, s = db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE id IN "
                                      f"({marks})", chunk).fetchone()
                    db.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
                    n, freed = n + c, freed + s
            self._depth -= n
            self._bytes -= freed
            self._acked += n
            return int(n)

    # -- numbers -------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return self._depth

    @property
    def dropped(self) -> int:
        with self._lock:
            return counter(self._conn, "dropped")

    def stats(self) -> OutboxStats:
        with self._lock:
            db = self._conn
            head = db.execute("SELECT created FROM messages ORDER BY id LIMIT 1").fetchone()
            age = max(0.0, self._clock() - head[0]) if head else None
            return OutboxStats(depth=self._depth, bytes=self._bytes, oldest_age_s=age, dropped=counter(db, "dropped"),
                               added=self._added, acked=self._acked, corrupt=counter(db, "corrupt"),
                               lost_files=counter(db, "lost_files"))


