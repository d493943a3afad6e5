"""Fixtures of the office tests: a private PostgreSQL+PostGIS (one server per session, a fresh database per
test), SQLite files, and a private Mosquitto configured the way the office needs it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import MISSING_MESSAGE, MosquittoBroker, mosquitto_available
from tests.postgres import PostgresServer, missing_reason

_db_names = itertools.count(1)

# The office's broker settings: an unlimited queue per offline session (Mosquitto's default of
# 1000 queued messages would drop what a stopped worker's session must keep).
OFFICE_BROKER_CONFIG = "max_queued_messages 0"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    return pg_server.create_database(f"office_{next(_db_names)}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'office.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both backends: a test using this runs once on SQLite and once on PostgreSQL/PostGIS."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'office.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def office_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if not mosquitto_available():
        pytest.skip(MISSING_MESSAGE)
    broker = MosquittoBroker(tmp_path / "broker", extra_config=OFFICE_BROKER_CONFIG)
    broker.start()
    yield broker
    broker.stop(kill=True)
