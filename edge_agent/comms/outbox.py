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

from edge_agent.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux; the lock is advisory anyway
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    msg_id TEXT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    props TEXT,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


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
            self._db = self._open()
            self._depth, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
        except BaseException:
            self._release_file_lock()
            raise
        self.prune()

    @classmethod
    def from_config(cls, cfg: Any, path: str | Path) -> Outbox:
        """From an ``OutboxConfig`` (edge_agent.config.mqtt) and the resolved file path."""
        return cls(path, max_messages=cfg.max_messages, max_bytes=cfg.max_bytes, max_age_s=cfg.max_age_s)

    # -- opening -------------------------------------------------------------------------
    def _take_file_lock(self) -> int | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise OutboxError(f"outbox {self.path}: cannot create its folder or lock file ({exc.strerror}); "
                              "check state_dir and its permissions") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise OutboxError(f"outbox {self.path} is in use by another process; run one agent per outbox "
                                  "(stop the other one or give this one its own state_dir)") from None
        return fd

    def _release_file_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"outbox {self.path}: the filesystem does not support SQLite WAL mode (got "
                                  f"'{mode}'); put state_dir on a local disk")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise OutboxError(f"outbox {self.path} was written by a newer agent (schema {version}); upgrade "
                                  "the agent or move the file aside")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("SELECT COUNT(*) FROM messages").fetchone()
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"outbox {self.path} is not a usable SQLite database ({exc}); move it aside to start "
                              "a fresh outbox (its queued messages are then lost)") from None
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
            self._db = None  # type: ignore[assignment]
            self._release_file_lock()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._db is None

    # -- counters ------------------------------------------------------------------------
    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, name: str, by: int = 1) -> int:
        value = self._counter(name) + by
        self._db.execute("INSERT INTO counters(name, value) VALUES(?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value=excluded.value", (name, value))
        return value

    def _check_open(self) -> None:
        if self._db is None:
            raise OutboxError(f"outbox {self.path} is closed")

    def next_seq(self, stream: str) -> int:
        """Allocate (and persist) the next ``seq`` of a stream whose messages are not queued."""
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._bump(f"seq:{stream}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return seq

    def last_seq(self, stream: str) -> int:
        """The last ``seq`` allocated on a stream (0 if none)."""
        with self._lock:
            self._check_open()
            return self._counter(f"seq:{stream}")

    # -- queue ---------------------------------------------------------------------------
    def add(self, stream: str, topic: str, build: Callable[[int], bytes], *, qos: int = 1, retain: bool = False,
            props: dict[str, Any] | None = None, msg_id: str | None = None) -> OutboxEntry | None:
        """Allocate the stream's next ``seq``, build the payload with it and store it, atomically.

        Returns None when the message alone exceeds ``max_bytes``: it is counted as dropped
        (its ``seq`` is used, so the receiver sees the gap) instead of evicting everything else.
        """
        with self._lock:
            self._check_open()
            now = self._clock()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._bump(f"seq:{stream}")
                payload = bytes(build(seq))
                size = len(payload)
                if size > self.max_bytes:
                    self._bump("dropped")
                    self._db.execute("COMMIT")
                    log.warning("outbox: dropped %s seq %d: %d bytes is more than outbox.max_bytes %d", stream, seq,
                                size, self.max_bytes)
                    return None
                cur = self._db.execute(
                    "INSERT INTO messages(stream, seq, msg_id, topic, payload, qos, retain, props, created, size) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (stream, seq, msg_id, topic, payload, qos, int(retain),
                     json.dumps(props) if props else None, now, size))
                row_id = int(cur.lastrowid)
                self._depth += 1
                self._bytes += size
                self._enforce_bounds_locked()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._depth, self._bytes = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
                raise
            self._added += 1
            return OutboxEntry(row_id, stream, seq, msg_id, topic, payload, qos, bool(retain), props, now)

    def _enforce_bounds_locked(self) -> None:
        """Delete the oldest rows until count and bytes are within bounds (inside a transaction)."""
        if self._depth <= self.max_messages and self._bytes <= self.max_bytes:
            return
        excess_rows = max(0, self._depth - self.max_messages)
        excess_bytes = max(0, self._bytes - self.max_bytes)
        n, freed, last_id = 0, 0, None
        for row_id, size in self._db.execute("SELECT id, size FROM messages ORDER BY id"):
            if n >= excess_rows and freed >= excess_bytes:
                break
            n, freed, last_id = n + 1, freed + size, row_id
        if last_id is None:
            return
        self._db.execute("DELETE FROM messages WHERE id <= ?", (last_id,))
        self._bump("dropped", n)
        self._depth -= n
        self._bytes -= freed
        log.warning("outbox full: dropped the %d oldest message(s) (%d bytes); raise outbox.max_messages/"
                    "max_bytes or fix the broker link", n, freed)

    def prune(self) -> int:
        """Drop messages older than ``max_age_s``; returns how many."""
        with self._lock:
            self._check_open()
            head = self._db.execute("SELECT created FROM messages ORDER BY id LIMIT 1").fetchone()
            cutoff = self._clock() - self.max_age_s
            if head is None or head[0] >= cutoff:
                return 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n, freed = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE created < ?",
                                            (cutoff,)).fetchone()
                self._db.execute("DELETE FROM messages WHERE created < ?", (cutoff,))
                self._bump("dropped", n)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth -= n
            self._bytes -= freed
            if n:
                log.warning("outbox: dropped %d message(s) older than outbox.max_age_s=%gs", n, self.max_age_s)
            return int(n)

    def peek(self, after_id: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """The oldest ``limit`` messages with ``id > after_id``, in send order."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT id, stream, seq, msg_id, topic, payload, qos, retain, props, created FROM messages "
                "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [OutboxEntry(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], bool(r[7]),
                            json.loads(r[8]) if r[8] else None, r[9]) for r in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged messages (one transaction for a batch); unknown ids are ignored."""
        id_list = list(ids)
        if not id_list:
            return 0
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n, freed = 0, 0
                for start in range(0, len(id_list), 500):
                    chunk = id_list[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    c, s = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE id IN "
                                            f"({marks})", chunk).fetchone()
                    self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
                    n, freed = n + c, freed + s
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
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
            self._check_open()
            return self._counter("dropped")

    def stats(self) -> OutboxStats:
        with self._lock:
            self._check_open()
            head = self._db.execute("SELECT created FROM messages ORDER BY id LIMIT 1").fetchone()
            age = max(0.0, self._clock() - head[0]) if head else None
            return OutboxStats(depth=self._depth, bytes=self._bytes, oldest_age_s=age, dropped=self._counter("dropped"),
                               added=self._added, acked=self._acked)
