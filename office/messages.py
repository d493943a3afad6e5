"""From one MQTT message (topic, bytes, properties) to a checked message or a quarantine reason.

Nothing here touches the database or the network, so every refusal rule is a unit test. The
rules, in order: the topic must be ``<prefix>/<device>/<kind>``; the payload must not exceed
the size limit; it must be a JSON object (snapshots: a JPEG with MQTT 5 user properties, or
base64 JSON); its ``schema_version`` must be one the office knows (1, 2); it must satisfy the
JSON Schema of its kind (detections: the equivalent pydantic models, see ``office.models``); the
``device_id`` inside must be the one in the topic (the broker's ACL confines each vehicle to its
topic subtree, so a mismatch is a forgery or a bug, never data to file under another vehicle).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
from pydantic import ValidationError

from office.models import DEVICE_ID_PATTERN, MSG_ID_PATTERN, SUPPORTED_VERSIONS, Detection

KINDS = ("detections", "status", "health", "cmd/response", "snapshots")
JSON_SCHEMAS = {"status": "status", "health": "health", "cmd/response": "cmd-response"}
_DEVICE_RE = re.compile(DEVICE_ID_PATTERN)
_MSG_ID_RE = re.compile(MSG_ID_PATTERN)
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class Quarantine:
    """Why a message is refused; ``device_id``/``msg_id`` when they could be read."""

    reason: str
    device_id: str | None = None
    msg_id: str | None = None


@dataclass(frozen=True)
class JsonMessage:
    """A checked status, health or cmd/response message."""

    kind: str
    data: dict[str, Any]
    raw: bytes

    @property
    def msg_id(self) -> str:
        return str(self.data["msg_id"])


@dataclass(frozen=True)
class DetectionMessage:
    detection: Detection
    raw: bytes

    @property
    def msg_id(self) -> str:
        return self.detection.msg_id


@dataclass(frozen=True)
class SnapshotMessage:
    """A snapshot JPEG and its envelope (from MQTT 5 user properties or base64 JSON)."""

    msg_id: str
    device_id: str
    seq: int
    ts: datetime
    sent_ts: datetime | None
    frame_index: int | None
    crack_count: int | None
    content_type: str
    jpeg: bytes
    meta: dict[str, Any]


Checked = DetectionMessage | JsonMessage | SnapshotMessage | Quarantine


def split_topic(topic: str, prefix: str) -> tuple[str, str] | None:
    """``<prefix>/<device>/<kind>`` -> (device, kind); None when the topic is not one of ours."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    device, _, kind = topic[len(head):].partition("/")
    if kind not in KINDS:
        return None
    return device, kind


def _schema_dir() -> Any:
    return resources.files("office") / "schemas"


@cache
def json_schema(name: str) -> dict[str, Any]:
    """One schema of ``office/schemas`` with the envelope inlined (the validators need no resolver)."""
    schema: dict[str, Any] = json.loads((_schema_dir() / f"{name}.schema.json").read_text())
    envelope = json.loads((_schema_dir() / "envelope.schema.json").read_text())
    inline = {k: v for k, v in envelope.items() if k not in ("$schema", "$id", "title", "description")}
    schema["allOf"] = [inline if part == {"$ref": "envelope.schema.json"} else part
                       for part in schema.get("allOf", [])]
    return schema


@cache
def _validator(name: str) -> Callable[[Any], Any]:
    schema = dict(json_schema(name))
    # fastjsonschema implements up to draft 07; these schemas use nothing newer than $defs (a plain pointer)
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema.pop("$id", None)
    compiled: Callable[[Any], Any] = fastjsonschema.compile(schema)
    return compiled


def _strict_json(raw: bytes) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not valid JSON")

    return json.loads(raw, parse_constant=refuse)


def _version_problem(version: Any) -> str | None:
    if isinstance(version, bool) or not isinstance(version, int):
        return f"schema_version {version!r} is not an integer" if version is not None else "no schema_version"
    if version not in SUPPORTED_VERSIONS:
        return f"unsupported schema_version {version} (this office reads {', '.join(map(str, SUPPORTED_VERSIONS))})"
    return None


def _ids(obj: Any) -> tuple[str | None, str | None]:
    if not isinstance(obj, dict):
        return None, None
    dev, mid = obj.get("device_id"), obj.get("msg_id")
    return (dev if isinstance(dev, str) else None), (mid if isinstance(mid, str) else None)


def _parse_enveloped(raw: bytes) -> tuple[dict[str, Any], str | None, str | None] | Quarantine:
    """(object, device_id, msg_id) of a JSON object with a known schema_version, or why not."""
    try:
        obj = _strict_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Quarantine(f"not JSON: {exc}"[:300])
    if not isinstance(obj, dict):
        return Quarantine(f"not a JSON object but {type(obj).__name__}")
    dev, mid = _ids(obj)
    problem = _version_problem(obj.get("schema_version"))
    if problem:
        return Quarantine(problem, dev, mid)
    return obj, dev, mid


def _pydantic_reason(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"schema: {where}: {err['msg']}" if where else f"schema: {err['msg']}"


def check_detection(device: str, raw: bytes) -> DetectionMessage | Quarantine:
    """A detections payload -> the parsed message, or why it is refused."""
    try:
        det = Detection.model_validate_json(raw)
    except ValidationError as exc:
        # the slow path, only for refused messages: say the most useful reason
        parsed = _parse_enveloped(raw)
        if isinstance(parsed, Quarantine):
            return parsed
        _, dev, mid = parsed
        return Quarantine(_pydantic_reason(exc)[:300], dev, mid)
    if (b"NaN" in raw or b"Infinity" in raw):
        try:
            _strict_json(raw)
        except ValueError as jexc:
            return Quarantine(f"not JSON: {jexc}", det.device_id, det.msg_id)
    problem = _version_problem(det.schema_version)
    if problem:
        return Quarantine(problem, det.device_id, det.msg_id)
    if det.schema_version >= 2 and det.camera is None:
        return Quarantine("schema: camera: required from schema_version 2", det.device_id, det.msg_id)
    if det.device_id != device:
        return Quarantine(f"device_id {det.device_id!r} does not match the topic's {device!r}", det.device_id,
                          det.msg_id)
    return DetectionMessage(det, raw)


def check_json(kind: str, device: str, raw: bytes) -> JsonMessage | Quarantine:
    """A status, health or cmd/response payload against its JSON Schema."""
    parsed = _parse_enveloped(raw)
    if isinstance(parsed, Quarantine):
        return parsed
    obj, dev, mid = parsed
    try:
        _validator(JSON_SCHEMAS[kind])(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        return Quarantine(f"schema: {exc.message}"[:300], dev, mid)
    if _iso(obj["ts"]) is None or _iso(obj["sent_ts"]) is None:
        return Quarantine("ts/sent_ts are not ISO-8601 times with a zone", dev, mid)
    if dev != device:
        return Quarantine(f"device_id {dev!r} does not match the topic's {device!r}", dev, mid)
    return JsonMessage(kind, obj, raw)


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def check_snapshot(device: str, raw: bytes, user_properties: Mapping[str, str],
                   content_type: str | None) -> SnapshotMessage | Quarantine:
    """A raw JPEG with the envelope as MQTT 5 user properties, or base64 JSON (MQTT 3.1.1)."""
    if raw[:1] == b"{":
        try:
            obj = _strict_json(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return Quarantine(f"not JSON: {exc}"[:300])
        if not isinstance(obj, dict):
            return Quarantine("snapshot JSON is not an object")
        meta = obj
        try:
            jpeg = base64.b64decode(str(obj.get("image_b64", "")), validate=True)
        except (binascii.Error, ValueError):
            return Quarantine("snapshot image_b64 is not base64", *_ids(obj))
        ctype = str(obj.get("content_type") or "image/jpeg")
    else:
        meta = dict(user_properties)
        jpeg = raw
        ctype = content_type or "image/jpeg"
    dev, mid = _ids(meta)
    problem = _version_problem(_int(meta.get("schema_version")))
    if problem:
        return Quarantine(f"snapshot: {problem}", dev, mid)
    seq, ts = _int(meta.get("seq")), _iso(meta.get("ts"))
    if mid is None or not _MSG_ID_RE.match(mid):
        return Quarantine("snapshot: msg_id missing or not 32 hex characters", dev, None)
    if seq is None or ts is None:
        return Quarantine("snapshot: seq or ts missing or invalid", dev, mid)
    if dev != device:
        return Quarantine(f"device_id {dev!r} does not match the topic's {device!r}", dev, mid)
    if not jpeg.startswith(JPEG_MAGIC):
        return Quarantine("snapshot is not a JPEG", dev, mid)
    return SnapshotMessage(mid, device, seq, ts, _iso(meta.get("sent_ts")), _int(meta.get("frame_index")),
                           _int(meta.get("crack_count")), ctype, jpeg,
                           {k: v for k, v in meta.items() if k != "image_b64"})


def check(topic: str, prefix: str, raw: bytes, *, max_bytes: int, user_properties: Mapping[str, str] | None = None,
          content_type: str | None = None) -> Checked:
    """The one entry point: any MQTT message of the fleet -> a checked message or a Quarantine."""
    parts = split_topic(topic, prefix)
    if parts is None:
        return Quarantine(f"topic {topic!r} is not <prefix>/<device>/<kind>")
    device, kind = parts
    if not _DEVICE_RE.match(device):
        return Quarantine(f"device id {device!r} in the topic is not valid")
    if len(raw) > max_bytes:
        return Quarantine(f"oversized: {len(raw)} bytes > {max_bytes}", device)
    if kind == "detections":
        return check_detection(device, raw)
    if kind == "snapshots":
        return check_snapshot(device, raw, user_properties or {}, content_type)
    return check_json(kind, device, raw)
