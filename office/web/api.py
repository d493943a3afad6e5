"""The read-only JSON API behind the page: routes, parameters, bounds, and a short answer cache.

Why a cache: every open page polls the summary and the fleet, and a summary counts whole
tables; with a few seconds of cache, ten open browsers cost the database what one does. The
data only changes when ingest's refresh step runs (every few seconds), so nothing is lost.

``GET /api/v1`` answers with the list below, so the API documents itself; docs/office.md has
the same table.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from office import __version__, query
from office.store.database import Database
from office.web import data
from office.web.params import CRACK_TYPES, SEVERITIES, BadRequest, NotFound, Params, page, resource_id

MAX_CRACKS = 10_000
MAX_SEGMENTS = 10_000
CACHE_ENTRIES = 128
CACHE_MAX_BYTES = 256 << 10


@dataclass(frozen=True)
class Settings:
    """What ``crackseg-office serve`` was started with (and the page reads from /api/v1/settings)."""

    tile_url: str | None = None
    tile_attribution: str = ""
    tile_max_zoom: int = 19
    stale_after_s: float = 120.0
    cache_s: float = 5.0
    refresh_s: float = 15.0
    crack_limit: int = 5000


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, doc: Any, **headers: str) -> Response:
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return Response(status, body, "application/json", dict(headers))


def error(status: int, message: str) -> Response:
    return json_response(status, {"error": message, "status": status})


ENDPOINTS: list[dict[str, Any]] = [
    {"path": "/api/v1", "description": "this list"},
    {"path": "/api/v1/settings", "description": "the page's settings: base-map tile URL (null: none), limits"},
    {"path": "/api/v1/summary", "description": "the numbers of `crackseg-office stats --json` (without "
     "per_device) and `extent` [minlon,minlat,maxlon,maxlat] of everything placed"},
    {"path": "/api/v1/fleet", "description": "every vehicle: state (online/stopped/offline from the retained "
     "status and last will, unknown), stale, last_seen, health (fps, outbox backlog, ...), model, messages, "
     "missing_seq"},
    {"path": "/api/v1/cracks", "params": {
        "bbox": "minlon,minlat,maxlon,maxlat: cracks whose extent touches it",
        "since": "ISO-8601 time with zone: cracks last seen since", "severity": "comma list of low,medium,high",
        "type": "comma list of longitudinal,transverse,diagonal,alligator",
        "placed": "1: only cracks with a geometry", "limit": f"1..{MAX_CRACKS} (default 2000)",
        "offset": "skip this many"},
     "description": "GeoJSON FeatureCollection, worst first (severity, then length), with total, returned, "
                    "offset, limit, truncated"},
    {"path": "/api/v1/cracks/{id}", "description": "one crack (GeoJSON Feature) with snapshot (url), segment "
     "and its latest observations"},
    {"path": "/api/v1/snapshots/{id}.jpg", "description": "a stored snapshot (image/jpeg)"},
    {"path": "/api/v1/segments", "params": {
        "bbox": "as for cracks", "since": "as for cracks", "order": "worst (default: lowest condition index "
        "first) or id", "limit": f"1..{MAX_SEGMENTS} (default 100)", "offset": "skip this many"},
     "description": "GeoJSON FeatureCollection of road segments (the driven track) with condition index, "
                    "density and crack length per severity"},
]


class Api:
    """Answers ``GET /api/...`` for one database; thread-safe (one engine pool, a locked cache)."""

    def __init__(self, db: Database, settings: Settings):
        self.db, self.settings = db, settings
        self._cache: OrderedDict[tuple[str, str], tuple[float, Response]] = OrderedDict()
        self._lock = threading.Lock()
        self._routes: list[tuple[re.Pattern[str], Callable[..., Response], bool]] = [
            (re.compile(r"/api/v1/?"), self._index, False),
            (re.compile(r"/api/v1/settings"), self._settings, False),
            (re.compile(r"/api/v1/summary"), self._summary, True),
            (re.compile(r"/api/v1/fleet"), self._fleet, True),
            (re.compile(r"/api/v1/cracks"), self._cracks, True),
            (re.compile(r"/api/v1/cracks/([^/]+)"), self._crack, True),
            (re.compile(r"/api/v1/snapshots/([^/]+)\.jpg"), self._snapshot, False),
            (re.compile(r"/api/v1/segments"), self._segments, True),
        ]

    def handle(self, path: str, query_string: str) -> Response:
        for pattern, handler, cached in self._routes:
            m = pattern.fullmatch(path)
            if m is None:
                continue
            args = (query_string, *m.groups())
            try:
                if not cached:
                    return handler(*args)
                return self._cached(path, query_string, functools.partial(handler, *args))
            except BadRequest as exc:
                return error(400, str(exc))
            except NotFound as exc:
                return error(404, str(exc))
        return error(404, f"no such endpoint: {path[:100]} (GET /api/v1 lists them)")

    def _cached(self, path: str, query_string: str, make: Callable[[], Response]) -> Response:
        key, now = (path, query_string), time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        resp = make()   # outside the lock: two misses may both query, which is harmless
        # bounded: at most CACHE_ENTRIES answers of at most CACHE_MAX_BYTES (a big map view is not kept)
        if resp.status == 200 and self.settings.cache_s > 0 and len(resp.body) <= CACHE_MAX_BYTES:
            with self._lock:
                self._cache[key] = (now + self.settings.cache_s, resp)
                self._cache.move_to_end(key)
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        return resp

    # -- endpoints ----------------------------------------------------------------------------
    def _index(self, qs: str) -> Response:
        Params(qs, ())
        return json_response(200, {"version": __version__, "read_only": True, "endpoints": ENDPOINTS})

    def _settings(self, qs: str) -> Response:
        Params(qs, ())
        s = self.settings
        return json_response(200, {"version": __version__, "tile_url": s.tile_url,
                                   "tile_attribution": s.tile_attribution, "tile_max_zoom": s.tile_max_zoom,
                                   "refresh_s": s.refresh_s, "crack_limit": s.crack_limit,
                                   "max_cracks": MAX_CRACKS, "max_segments": MAX_SEGMENTS,
                                   "stale_after_s": s.stale_after_s})

    def _summary(self, qs: str) -> Response:
        Params(qs, ())
        return json_response(200, data.summary(self.db))

    def _fleet(self, qs: str) -> Response:
        Params(qs, ())
        return json_response(200, data.fleet(self.db, stale_after_s=self.settings.stale_after_s))

    def _cracks(self, qs: str) -> Response:
        p = Params(qs, ("bbox", "since", "severity", "type", "placed", "limit", "offset"))
        flt, pg = p.filter(), page(p, 2000, MAX_CRACKS)
        return json_response(200, data.cracks(self.db, flt, pg, severity=p.subset("severity", SEVERITIES),
                                              types=p.subset("type", CRACK_TYPES), placed=p.flag("placed")))

    def _crack(self, qs: str, raw_id: str) -> Response:
        Params(qs, ())
        doc = data.crack(self.db, resource_id(raw_id))
        if doc is None:
            raise NotFound(f"no crack {raw_id}")
        return json_response(200, doc)

    def _snapshot(self, qs: str, raw_id: str) -> Response:
        Params(qs, ())
        found = query.snapshot(self.db, resource_id(raw_id))
        if found is None:
            raise NotFound(f"no snapshot {raw_id}")
        ctype, jpeg = found
        if ctype != "image/jpeg" or not jpeg.startswith(b"\xff\xd8"):
            raise NotFound(f"snapshot {raw_id} is not a JPEG")
        # a stored snapshot never changes: let the browser keep it
        return Response(200, jpeg, "image/jpeg", {"Cache-Control": "private, max-age=86400, immutable"})

    def _segments(self, qs: str) -> Response:
        p = Params(qs, ("bbox", "since", "order", "limit", "offset"))
        flt, pg = p.filter(), page(p, 100, MAX_SEGMENTS)
        return json_response(200, data.segments(self.db, flt, pg, order=p.choice("order", ("worst", "id"), "worst")))
