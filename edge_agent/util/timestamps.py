"""ISO-8601 UTC timestamps, the one format every message, audit line and report carries."""

from __future__ import annotations

import math
from datetime import datetime, timezone


def iso_utc(ts: float | datetime) -> str:
    """Epoch seconds or an aware datetime -> ``2024-05-01T09:30:12.345Z``.

    Naive datetimes are refused (ValueError): on a vehicle computer the local zone is often
    wrong or unset, and an hour's error in a survey timestamp puts cracks on the wrong road.
    """
    if isinstance(ts, datetime):
        if ts.tzinfo is None or ts.utcoffset() is None:
            raise ValueError(f"timestamp {ts.isoformat()} has no timezone; pass epoch seconds or an aware "
                             "datetime (e.g. datetime.now(timezone.utc))")
        dt = ts.astimezone(timezone.utc)
    elif isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts):
        dt = datetime.fromtimestamp(float(ts), tz=timezone.utc)
    else:
        raise ValueError(f"timestamp {ts!r} must be epoch seconds (float) or an aware datetime")
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
