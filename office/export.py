"""Exports: GeoJSON (RFC 7946) and CSV (geometry as WKT) of the cracks or the segments.

GeoJSON per RFC 7946: one FeatureCollection, WGS84 longitude/latitude order, no ``crs`` member,
coordinates to 7 decimals (about 1 cm: the input positions carry no more); a crack that could
not be placed has ``"geometry": null`` (allowed for unlocated features). CSV: a header row,
one row per feature, the geometry as a ``wkt`` column that QGIS ("Delimited text", geometry
definition WKT) and spreadsheets read; times in ISO-8601 UTC.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TextIO

from office import query
from office.errors import UserError
from office.store.database import Database

Format = Literal["geojson", "csv"]
What = Literal["cracks", "segments"]


def _features(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for r in rows:
        coords = r.pop("coordinates")
        yield {"type": "Feature", "id": r["id"],
               "geometry": {"type": "LineString", "coordinates": coords} if coords else None,
               "properties": r}


def write_geojson(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    """Streams the FeatureCollection (an inventory may not fit in memory twice)."""
    out.write('{"type":"FeatureCollection","features":[')
    n = 0
    for feature in _features(rows):
        out.write(("," if n else "") + "\n" + json.dumps(feature, separators=(",", ":"), ensure_ascii=False))
        n += 1
    out.write("\n]}\n")
    return n


def wkt(coords: list[list[float]] | None) -> str:
    if not coords:
        return ""
    return "LINESTRING(" + ",".join(f"{x} {y}" for x, y in coords) + ")"


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO, fields: tuple[str, ...]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*fields, "wkt"])
    n = 0
    for r in rows:
        writer.writerow([("" if r[f] is None else r[f]) for f in fields] + [wkt(r["coordinates"])])
        n += 1
    return n


def export(db: Database, fmt: Format, what: What, out_path: str | Path, flt: query.Filter = query.Filter()) -> int:
    """Write the file atomically (a reader never sees half an export); returns the feature count."""
    rows = query.cracks(db, flt) if what == "cracks" else query.segments(db, flt)
    fields = query.CRACK_FIELDS if what == "cracks" else query.SEGMENT_FIELDS
    path = Path(out_path)
    if not path.parent.exists():
        raise UserError(f"folder {path.parent} for --out does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            n = write_geojson(rows, f) if fmt == "geojson" else write_csv(rows, f, fields)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
