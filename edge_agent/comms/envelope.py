"""The envelope every JSON message carries, so the office side can dedupe and detect loss.

Envelope fields sit at the top level next to the caller's fields (``{"schema_version": 2,
"msg_id": ..., "seq": 17, "device_id": "van-07", "ts": ..., "state": "online"}``) so a
dashboard reads ``msg["state"]`` without unwrapping. A caller field with an envelope name is
an error rather than a silent overwrite.

- ``msg_id``: unique per message; a re-sent message (after a crash or lost PUBACK) keeps it,
  so duplicates are recognisable.
- ``seq``: per device and per topic, contiguous and persistent across restarts (stored in
  the outbox database). On ``detections`` a gap means messages were dropped by the outbox
  bounds; on ``health``/``snapshots`` it means messages skipped while offline or lost at QoS 0.
  The last will (``status`` ``offline``) is registered before the connection exists and
  carries ``seq`` 0.
- ``ts``: capture time (ISO-8601 UTC, ``Z``) supplied by the caller; ``sent_ts`` is when the
  agent created the message, which differs from ``ts`` when processing lagged.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import PurePath
from typing import Any

from edge_agent.errors import UserError
from edge_agent.util import timestamps

SCHEMA_VERSION = 2
ENVELOPE_FIELDS = ("schema_version", "msg_id", "seq", "device_id", "ts", "sent_ts")


class EnvelopeError(UserError, ValueError):
    """A payload that cannot be wrapped or sent as JSON; the message names the field."""


def new_msg_id() -> str:
    """32 hex characters of uuid4: unique without coordination between devices."""
    return uuid.uuid4().hex


def iso_utc(ts: float | datetime) -> str:
    """``util.timestamps.iso_utc`` with its refusal as an EnvelopeError (a payload problem)."""
    try:
        return timestamps.iso_utc(ts)
    except ValueError as exc:
        raise EnvelopeError(str(exc)) from None


def wrap(payload: Mapping[str, Any], *, device_id: str, seq: int, ts: float | datetime, sent_ts: float,
         msg_id: str | None = None) -> dict[str, Any]:
    """The caller's fields plus the envelope fields (envelope first, for readable logs)."""
    clash = sorted(set(payload) & set(ENVELOPE_FIELDS))
    if clash:
        raise EnvelopeError(f"payload field(s) {', '.join(clash)} are reserved for the envelope; rename them")
    return {"schema_version": SCHEMA_VERSION, "msg_id": msg_id or new_msg_id(), "seq": int(seq),
            "device_id": device_id, "ts": iso_utc(ts), "sent_ts": iso_utc(sent_ts), **payload}


def _default(obj: Any) -> Any:
    """JSON for what the pipeline naturally produces: numpy scalars/arrays, datetimes, paths."""
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "shape", None) == ():
        return item()
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(obj, datetime):
        return iso_utc(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, (bytes, bytearray)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN/Infinity are refused because most JSON parsers reject them."""
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=_default).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(f"payload cannot be sent as JSON: {exc}") from None


def decode(data: bytes | str) -> dict[str, Any]:
    """Parse and check one enveloped message (for consumers, tools and tests)."""
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"message is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise EnvelopeError("message is not a JSON object")
    missing = [f for f in ENVELOPE_FIELDS if f not in msg]
    if missing:
        raise EnvelopeError(f"message lacks envelope field(s) {', '.join(missing)}")
    if msg["schema_version"] != SCHEMA_VERSION:
        raise EnvelopeError(f"schema_version {msg['schema_version']!r} is not {SCHEMA_VERSION}")
    if not isinstance(msg["seq"], int) or isinstance(msg["seq"], bool) or msg["seq"] < 0:
        raise EnvelopeError(f"seq {msg['seq']!r} is not a non-negative integer")
    for name in ("ts", "sent_ts"):
        try:
            datetime.fromisoformat(str(msg[name]).replace("Z", "+00:00"))
        except ValueError:
            raise EnvelopeError(f"{name} {msg[name]!r} is not ISO-8601") from None
    return msg


JSON_CONTENT_TYPE = "application/json"
RAW_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class EncodedMessage:
    """What goes on the wire for one message: the bytes and how MQTT 5 should label them."""

    data: bytes
    content_type: str
    user_properties: tuple[tuple[str, str], ...] = ()


def raw_envelope_properties(*, device_id: str, seq: int, msg_id: str, ts: str, sent_ts: str,
                            extra: Mapping[str, Any] | None = None) -> tuple[tuple[str, str], ...]:
    """The envelope of a raw-bytes message (a JPEG), as MQTT 5 user properties, timestamps as ISO text."""
    pairs = [("schema_version", str(SCHEMA_VERSION)), ("msg_id", msg_id), ("seq", str(seq)),
             ("device_id", device_id), ("ts", ts), ("sent_ts", sent_ts)]
    return tuple(pairs + [(str(k), str(v)) for k, v in (extra or {}).items()])


def encode_message(payload: Mapping[str, Any] | bytes | bytearray | memoryview, *, device_id: str, seq: int,
                   msg_id: str, ts: float | datetime, sent_ts: float, content_type: str | None = None,
                   extra: Mapping[str, Any] | None = None) -> EncodedMessage:
    """One message as bytes plus labels, the same way for the outbox and for direct publishing.

    A mapping is wrapped in the envelope and sent as JSON; bytes are sent as they are, with
    the envelope (and ``extra`` fields) as user properties. Pure: no clock, no I/O.
    """
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return EncodedMessage(bytes(payload), content_type or RAW_CONTENT_TYPE,
                              raw_envelope_properties(device_id=device_id, seq=seq, msg_id=msg_id, ts=iso_utc(ts),
                                                      sent_ts=iso_utc(sent_ts), extra=extra))
    body = encode(wrap(payload, device_id=device_id, seq=seq, ts=ts, sent_ts=sent_ts, msg_id=msg_id))
    return EncodedMessage(body, JSON_CONTENT_TYPE)


def jpeg_b64_fields(jpeg: bytes) -> dict[str, Any]:
    """A JPEG as JSON fields, for MQTT 3.1.1 where raw bytes could not carry the envelope."""
    return {"content_type": "image/jpeg", "image_b64": base64.b64encode(jpeg).decode("ascii")}
