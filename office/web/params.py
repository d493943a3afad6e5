"""Strict parsing of the JSON API's query parameters.

Why strict: the API is read by a page and by scripts; a misspelt parameter that is silently
ignored returns the whole inventory instead of the asked-for part, so unknown, repeated or
malformed parameters are a 400 with a sentence that says what is allowed. Every list has a
bounded ``limit`` so that no request makes the server build an unbounded answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl

from office.query import Filter, bbox_problem

MAX_QUERY_CHARS = 2048
SEVERITIES = ("low", "medium", "high")
CRACK_TYPES = ("longitudinal", "transverse", "diagonal", "alligator")


class BadRequest(Exception):
    """A request the API refuses (HTTP 400), with the reason shown to the caller."""


class NotFound(Exception):
    """No such resource (HTTP 404)."""


class Params:
    """The query string of one request: each name at most once, only names the endpoint knows."""

    def __init__(self, query: str, allowed: Iterable[str]):
        if len(query) > MAX_QUERY_CHARS:
            raise BadRequest(f"query string longer than {MAX_QUERY_CHARS} characters")
        allowed = tuple(allowed)
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=32)
        except ValueError as exc:
            raise BadRequest(f"malformed query string: {exc}") from None
        self.values: dict[str, str] = {}
        for name, value in pairs:
            if name not in allowed:
                known = ", ".join(allowed) if allowed else "none"
                raise BadRequest(f"unknown parameter '{name[:40]}' (this endpoint takes: {known})")
            if name in self.values:
                raise BadRequest(f"parameter '{name}' given more than once")
            self.values[name] = value

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if value else None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
            raise BadRequest(f"{name}={raw[:40]!r} is not a whole number from {low} to {high}")
        value = int(raw)
        if not low <= value <= high:
            raise BadRequest(f"{name}={value} is out of range: {low} to {high}")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        raw = self.text(name) or default
        if raw not in options:
            raise BadRequest(f"{name}={raw[:40]!r}: one of {', '.join(options)}")
        return raw

    def subset(self, name: str, options: tuple[str, ...]) -> tuple[str, ...] | None:
        """A comma-separated subset of ``options`` (None when absent: no restriction)."""
        raw = self.text(name)
        if raw is None:
            return None
        items = tuple(dict.fromkeys(x.strip() for x in raw.split(",")))
        bad = [x for x in items if x not in options]
        if bad:
            raise BadRequest(f"{name}: {bad[0][:40]!r} is not one of {', '.join(options)}")
        return items

    def flag(self, name: str) -> bool:
        raw = self.text(name)
        if raw is None:
            return False
        if raw not in ("0", "1", "true", "false"):
            raise BadRequest(f"{name}={raw[:40]!r}: 1/true or 0/false")
        return raw in ("1", "true")

    def bbox(self) -> tuple[float, float, float, float] | None:
        raw = self.text("bbox")
        if raw is None:
            return None
        box, problem = bbox_problem(raw)
        if problem:
            raise BadRequest(f"bbox {problem}")
        return box

    def since(self) -> datetime | None:
        raw = self.text("since")
        if raw is None:
            return None
        try:
            t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"since={raw[:40]!r} is not an ISO-8601 time (e.g. 2024-05-01T00:00:00Z)") from None
        if t.tzinfo is None:
            raise BadRequest(f"since={raw[:40]!r} has no time zone; add Z for UTC")
        return t

    def filter(self) -> Filter:
        return Filter(self.bbox(), self.since())


@dataclass(frozen=True)
class Page:
    """``limit``/``offset`` of a list, already checked against the endpoint's bounds."""

    limit: int
    offset: int


def page(params: Params, default: int, maximum: int) -> Page:
    return Page(params.integer("limit", default, 1, maximum), params.integer("offset", 0, 0, 10_000_000))


def resource_id(raw: str) -> int:
    """A row id from a URL path: digits only, within a signed 64-bit integer."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise NotFound(f"no such id: {raw[:40]!r}")
    return int(raw)
