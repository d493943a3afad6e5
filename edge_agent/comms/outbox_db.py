"""The outbox's SQLite file: schema, migration, transactions, counters, row integrity, salvage.

Kept apart from ``outbox.py`` (the queue's logic: sequence numbers, bounds, peek and ack) so
each reads as one job. Everything here takes the connection explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux; the lock is advisory anyway
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 2
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
    size INTEGER NOT NULL,
    checksum TEXT
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    stream TEXT,
    seq INTEGER,
    msg_id TEXT,
    payload BLOB,
    reason TEXT NOT NULL,
    quarantined REAL NOT NULL
);
"""


_MESSAGE_COLUMNS = frozenset({"id", "stream", "seq", "msg_id", "topic", "payload", "qos", "retain", "props", "created",
                              "size", "checksum"})


def payload_checksum(payload: bytes) -> str:
    """What each row stores to prove its payload is the one the agent wrote."""
    return hashlib.sha256(payload).hexdigest()


class UnusableDatabase(Exception):
    """The outbox file is not a database SQLite can use (triggers the move-aside)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def take_file_lock(path: Path) -> int | None:
    """An exclusive ``flock`` on ``<path>.lock``: one process per outbox. OSError when taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
    return fd


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating or migrating) an outbox database in WAL mode with full sync.

    Raises UnusableDatabase when the file is not a usable outbox, ValueError for a file
    written by a newer agent or a filesystem without WAL.
    """
    db = None
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ValueError(f"the filesystem does not support SQLite WAL mode (got '{mode}'); put state_dir on "
                             "a local disk")
        db.execute("PRAGMA synchronous=FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ValueError(f"it was written by a newer agent (schema {version}); upgrade the agent or move the "
                             "file aside")
        db.executescript(_SCHEMA)
        if version == 1:
            _migrate_v1(db)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        missing = _MESSAGE_COLUMNS - columns
        if missing:
            raise sqlite3.DatabaseError(f"table 'messages' lacks column(s) {', '.join(sorted(missing))}")
        db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()
        raise UnusableDatabase(str(exc)) from None
    except BaseException:
        if db is not None:
            db.close()
        raise
    return db


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Schema 1 had no checksum column: add it and vouch for the rows as they are now."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    with transaction(db):
        if "checksum" not in columns:
            db.execute("ALTER TABLE messages ADD COLUMN checksum TEXT")
        rows = db.execute("SELECT id, payload FROM messages WHERE checksum IS NULL").fetchall()
        db.executemany("UPDATE messages SET checksum=? WHERE id=?", [(payload_checksum(bytes(p)), i) for i, p in rows])


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception (then re-raised).

    IMMEDIATE takes the write lock at the start, so two writers never deadlock on upgrade.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def counter(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
    return int(row[0]) if row else 0


def set_counter(db: sqlite3.Connection, name: str, value: int) -> None:
    db.execute("INSERT INTO counters(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
               (name, int(value)))


def bump(db: sqlite3.Connection, name: str, by: int = 1) -> int:
    value = counter(db, name) + by
    set_counter(db, name, value)
    return value


def row_problem(payload: bytes, size: int, checksum: str | None, props: str | None) -> str | None:
    """Why a stored row must not be sent, or None when it is intact."""
    if size != len(payload):
        return f"{len(payload)} bytes stored, {size} written"
    if checksum is None or payload_checksum(payload) != checksum:
        return "payload does not match its checksum"
    if props:
        try:
            json.loads(props)
        except ValueError:
            return "message properties are not valid JSON"
    return None


def salvage(path: Path) -> tuple[int | None, dict[str, int]]:
    """Best effort on an unusable outbox file: how many messages it held, and its counters."""
    held: int | None = None
    counters: dict[str, int] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None, {}
    try:
        try:
            held = int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        except sqlite3.Error:
            held = None
        try:
            counters = {str(n): int(v) for n, v in db.execute("SELECT name, value FROM counters")}
        except (sqlite3.Error, ValueError, TypeError):
            counters = {}
    finally:
        db.close()
    return held, counters
