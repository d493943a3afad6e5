"""Opening the office database (SQLite file or PostgreSQL/PostGIS) and the few dialect differences.

URLs: ``sqlite:///office.db``, a plain path (``office.db``), or ``postgresql://user@host/db``
(driven by psycopg 3). Whatever goes wrong while opening becomes a ``UserError`` with one line
that says what to fix (the CLI prints it and exits 2).

SQLite runs in WAL mode with ``synchronous=FULL`` (a message is acknowledged to the broker
only after its commit, so the commit must survive a power cut, not only a crash), a 60 s busy
timeout, and ``BEGIN IMMEDIATE`` for every writing transaction: two writers that both start
reading and then write would otherwise fail with "database is locked" instead of waiting.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.sql import Insert
from sqlalchemy.sql.schema import Table

from office.config import AnalysisConfig
from office.errors import DatabaseUnavailableError, UserError
from office.store.schema import SCHEMA_VERSION, SEQ_GAPS_VIEW, Tables, build_tables

log = logging.getLogger(__name__)

_LOCK_KEYS = {"schema": 0x0FF1CE01, "refresh": 0x0FF1CE02}


def parse_db_url(raw: str) -> URL:
    """``sqlite:///x.db`` | ``x.db`` | ``postgresql://...`` -> an SQLAlchemy URL with our drivers."""
    if "://" not in raw:
        if not raw.strip():
            raise UserError("database URL is empty; give a file (office.db) or postgresql://user@host/db")
        return URL.create("sqlite", database=str(Path(raw).expanduser()))
    try:
        url = make_url(raw)
    except exc.ArgumentError:
        raise UserError(f"database URL '{raw}' is not valid; write sqlite:///office.db or "
                        "postgresql://user:password@host:5432/db") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise UserError("an in-memory SQLite database cannot be shared between processes; give a file: "
                            "sqlite:///office.db")
        return url.set(drivername="sqlite")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    raise UserError(f"database URL '{url.render_as_string(hide_password=True)}': unsupported kind '{backend}'; "
                    "use sqlite:///file.db or postgresql://...")


def first_line(err: BaseException) -> str:
    """The first line of a (database) error's message, or its type's name when the message is empty."""
    orig = getattr(err, "orig", None) or err
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


class Database:
    """An engine, the tables for its dialect, and the dialect-specific statements."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.t: Tables = build_tables(self.dialect)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, raw_url: str, *, create: bool = True, analysis: AnalysisConfig | None = None,
             pool_size: int = 2) -> Database:
        """Connect, and create the schema when ``create`` (else it must exist: read-only commands).

        ``analysis`` is stored when the database is created; later it comes from the database.
        """
        url = parse_db_url(raw_url)
        shown = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite":
            path = Path(url.database or "")
            if not create and not path.exists():
                raise UserError(f"database file {path} does not exist (run crackseg-office ingest --db {raw_url} "
                                "first, or check the path)")
            if create and not path.parent.exists():
                raise UserError(f"folder {path.parent} for database file {path.name} does not exist")
            engine = create_engine(url, connect_args={"timeout": 60, "isolation_level": None})
            _sqlite_setup(engine)
        else:
            engine = create_engine(url, pool_size=pool_size, max_overflow=4, pool_pre_ping=True,
                                   connect_args={"connect_timeout": 10, "application_name": "crackseg-office"})
        db = cls(engine)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except exc.DBAPIError as err:
            engine.dispose()
            raise DatabaseUnavailableError(f"cannot open database {shown}: {first_line(err)}") from None
        try:
            if create:
                db.create_schema(analysis or AnalysisConfig())
            else:
                db.check_schema()
        except exc.DBAPIError as err:
            engine.dispose()
            raise DatabaseUnavailableError(f"database {shown}: {first_line(err)}") from None
        return db

    def close(self) -> None:
        self.engine.dispose()

    def create_schema(self, analysis: AnalysisConfig) -> None:
        """Tables, indexes, views and the shared settings; safe when several processes start at once."""
        with self.begin() as conn:
            if self.is_postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEYS["schema"]})
                try:
                    with conn.begin_nested():
                        conn.execute(text("CREATE EXTENSION IF NOT EXISTS postgis"))
                except exc.DBAPIError as err:
                    raise UserError(f"PostGIS is not available in database {self.display_url} "
                                    f"({first_line(err)}): install postgresql-15-postgis-3 (or your version's) "
                                    "and, as a superuser, run CREATE EXTENSION postgis") from None
            existing = conn.execute(select(self.t.meta.c.value).where(self.t.meta.c.key == "schema_version")
                                    ).scalar_one_or_none() if self._has_table(conn, "office_meta") else None
            if existing is not None and existing != SCHEMA_VERSION:
                raise UserError(f"database {self.display_url} has office schema {existing}, this program "
                                f"uses {SCHEMA_VERSION}")
            self.t.metadata.create_all(conn)
            if not self._has_view(conn, "seq_gaps"):
                conn.execute(text(SEQ_GAPS_VIEW))
            if existing is None:
                conn.execute(self.t.meta.insert(), [
                    {"key": "schema_version", "value": SCHEMA_VERSION},
                    {"key": "analysis", "value": analysis.model_dump_json()}])

    def check_schema(self) -> None:
        with self.connect() as conn:
            if not self._has_table(conn, "office_meta"):
                raise UserError(f"database {self.display_url} holds no crackseg-office data (no office_meta table)")

    def _has_table(self, conn: Connection, name: str) -> bool:
        if self.is_postgres:
            return bool(conn.execute(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar())
        return conn.execute(text("SELECT 1 FROM sqlite_master WHERE type='table' AND name=:n"),
                            {"n": name}).first() is not None

    def _has_view(self, conn: Connection, name: str) -> bool:
        if self.is_postgres:
            return conn.execute(text("SELECT 1 FROM pg_views WHERE viewname=:n AND schemaname=current_schema()"),
                                {"n": name}).first() is not None
        return conn.execute(text("SELECT 1 FROM sqlite_master WHERE type='view' AND name=:n"),
                            {"n": name}).first() is not None

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A writing transaction (SQLite: BEGIN IMMEDIATE, waits for the write lock)."""
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A reading transaction (SQLite: a deferred BEGIN, never blocks writers in WAL mode)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(office_readonly=True)
            with conn.begin():
                yield conn

    def refresh_lock(self, conn: Connection, *, wait: bool) -> bool:
        """Take the lock that serialises refresh steps for the rest of ``conn``'s transaction.

        PostgreSQL: a transaction-level advisory lock (ingest is not blocked by it). SQLite: the
        transaction already holds the database's write lock (BEGIN IMMEDIATE), which is enough.
        """
        if not self.is_postgres:
            return True
        fn = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
        got = conn.execute(text(f"SELECT {fn}(:k)"), {"k": _LOCK_KEYS["refresh"]}).scalar()
        return True if wait else bool(got)

    # -- dialect statements -------------------------------------------------------------------
    def insert_ignore(self, table: Table, *conflict: str) -> Insert:
        """INSERT ... ON CONFLICT (conflict) DO NOTHING: the idempotency of every message table."""
        if self.is_postgres:
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(conflict))
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(conflict))

    def insert_upsert(self, table: Table) -> Any:
        """A dialect ``insert`` that has ``on_conflict_do_update`` (and ``.excluded``)."""
        return postgresql.insert(table) if self.is_postgres else sqlite.insert(table)

    def id_allocator(self, conn: Connection, table: Table) -> IdAllocator:
        return IdAllocator(conn, table, self.is_postgres)

    def analysis_config(self, conn: Connection) -> AnalysisConfig:
        raw = conn.execute(select(self.t.meta.c.value).where(self.t.meta.c.key == "analysis")).scalar_one_or_none()
        return AnalysisConfig.model_validate_json(raw) if raw else AnalysisConfig()

    def set_analysis_config(self, conn: Connection, cfg: AnalysisConfig) -> None:
        conn.execute(self.t.meta.delete().where(self.t.meta.c.key == "analysis"))
        conn.execute(self.t.meta.insert(), {"key": "analysis", "value": cfg.model_dump_json()})


class IdAllocator:
    """Ids for rows the refresh step creates, handed out before the rows are written, so a run can
    refer to a new crack or segment at once and still insert them all in one statement at its end.

    Safe only under the refresh lock (the refresh step is the only writer of those tables):
    PostgreSQL draws from the column's sequence in blocks; SQLite counts on from MAX(id).
    """

    BLOCK = 256

    def __init__(self, conn: Connection, table: Table, postgres: bool):
        self.conn, self.table, self.postgres = conn, table, postgres
        self._free: list[int] = []
        self._next: int | None = None

    def __call__(self) -> int:
        if self.postgres:
            if not self._free:
                self._free = [int(r[0]) for r in self.conn.execute(
                    text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
                    {"t": self.table.name, "n": self.BLOCK})][::-1]
            return self._free.pop()
        if self._next is None:
            self._next = int(self.conn.execute(select(func.coalesce(func.max(self.table.c.id), 0))).scalar_one()) + 1
        value, self._next = self._next, self._next + 1
        return value


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = conn.get_execution_options().get("office_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def dumps(obj: Any) -> str:
    """Compact JSON for stored documents."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
