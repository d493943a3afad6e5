"""URLs as they may appear in logs, names and command answers: without their secrets."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` with its password and every query value replaced by ``***``.

    Camera URLs carry passwords (``rtsp://user:pw@cam/stream``), pre-signed download URLs
    carry tokens in the query (``?X-Amz-Signature=...``): both must stay out of logs, MQTT
    answers and health reports. The user name, host, path and query keys are kept, so the
    line still says which camera or file it was. Unparseable text is not echoed at all.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if parts.password is not None or "@" in netloc:
        host = parts.hostname or ""
        if port:
            host = f"{host}:{port}"
        user = parts.username or ""
        netloc = f"{user}:{REDACTED}@{host}" if parts.password is not None else f"{user}@{host}"
    query = parts.query
    if query:
        try:
            query = urlencode([(k, REDACTED) for k, _ in parse_qsl(query, keep_blank_values=True)], safe="*")
        except (UnicodeError, ValueError):  # a lone surrogate in a key: say nothing of the query
            query = REDACTED
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
