"""The office database: schema (``schema``), column types (``types``), opening and dialect bits (``database``)."""

from office.store.database import Database, parse_db_url
from office.store.schema import Tables

__all__ = ["Database", "Tables", "parse_db_url"]
