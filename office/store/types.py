"""Column types that differ between SQLite and PostgreSQL/PostGIS, behind one Python value each.

- geometry: PostGIS ``geometry(<kind>, 4326)`` (so QGIS opens the tables as layers, with GIST
  indexes); SQLite stores the same WKT as text. Python always sees WKT strings, in lon/lat order.
  Not GeoAlchemy2: it needs SpatiaLite for SQLite, which the embedded default must not require.
- timestamps: ``timestamptz`` in PostgreSQL; in SQLite naive UTC text (sorts chronologically).
  Python always gets aware UTC datetimes and must pass aware ones.
- raw JSON: ``jsonb`` in PostgreSQL (queryable), text in SQLite. The message's own bytes are
  stored (decoded as UTF-8), not a re-serialisation, and read back as a dict.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime, Text, cast, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType

SRID = 4326


class PostgisGeometry(UserDefinedType[str]):
    """``geometry(kind, 4326)``; binds WKT through ST_GeomFromText, reads WKT through ST_AsText."""

    cache_ok = True

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def get_col_spec(self, **kw: Any) -> str:
        return f"geometry({self.kind},{SRID})"

    def bind_expression(self, bindvalue: Any) -> ColumnElement[str]:
        return func.ST_GeomFromText(bindvalue, SRID, type_=self)

    def column_expression(self, colexpr: Any) -> ColumnElement[str]:
        return func.ST_AsText(colexpr, type_=self)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the database does with zones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: pass an aware (UTC) datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class PgRawJson(UserDefinedType[Any]):
    """``jsonb`` filled from a JSON text as received (a cast, no Python re-encoding)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "JSONB"

    def bind_expression(self, bindvalue: Any) -> ColumnElement[Any]:
        return cast(bindvalue, JSONB)


class SqliteRawJson(TypeDecorator[Any]):
    """JSON text in SQLite, parsed to a dict when read."""

    impl = Text
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return json.loads(value) if isinstance(value, str) else value


def geometry(dialect: str, kind: str) -> TypeEngine[str]:
    return PostgisGeometry(kind) if dialect == "postgresql" else Text()


def raw_json(dialect: str) -> TypeEngine[Any]:
    return PgRawJson() if dialect == "postgresql" else SqliteRawJson()
