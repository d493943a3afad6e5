"""Commands received over the link: parsed defensively, handled on their own thread, always answered.

Anyone who may publish on ``<prefix>/<device_id>/cmd/#`` can send bytes here, so parsing assumes
hostile input: a size cap before parsing, JSON nesting capped (a ``[`` x 1000 payload made
``json.loads`` raise RecursionError inside the command loop, which then answered nothing),
anything that is not a JSON object refused. A payload that cannot be parsed still reaches the
handler as a Command with ``parse_error`` set, so the registry refuses it, audits it, and the
sender gets an answer like for any other refusal.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from edge_agent.comms.base import Command, CommandError, CommandHandler

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 1 << 20  # a model-chunk command carries a base64 chunk of at most a few hundred KB
MAX_JSON_DEPTH = 32  # no command the agent knows nests deeper than a few levels

Respond = Callable[[Command, dict[str, Any]], None]


def json_depth_exceeds(text: str, limit: int) -> bool:
    """True when brackets nest deeper than ``limit`` (strings skipped), checked before ``json.loads``."""
    if text.count("[") + text.count("{") <= limit:  # depth never exceeds the number of opening brackets
        return False
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def parse_command(raw: bytes, max_bytes: int = MAX_COMMAND_BYTES) -> tuple[dict[str, Any], str | None]:
    """(the JSON object, None) or ({}, why it was refused). An empty payload is an empty object."""
    if len(raw) > max_bytes:
        return {}, f"command payload is {len(raw)} bytes, more than the {max_bytes} allowed"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {}, "command payload is not UTF-8 text"
    if not text.strip():
        return {}, None
    if json_depth_exceeds(text, MAX_JSON_DEPTH):
        return {}, f"command payload nests deeper than {MAX_JSON_DEPTH} levels"
    try:
        args = json.loads(text)
    except (ValueError, RecursionError):
        return {}, "command payload must be a JSON object (or empty): it is not valid JSON"
    if not isinstance(args, dict):
        return {}, "command payload must be a JSON object (or empty)"
    return args, None


def request_id_of(args: dict[str, Any]) -> str | int | None:
    rid = args.get("request_id", args.get("id", args.get("msg_id")))
    if rid is None or (isinstance(rid, (str, int)) and not isinstance(rid, bool)):
        return rid if not isinstance(rid, str) else rid[:200]
    return str(rid)[:200]


class CommandDispatcher:
    """Queues received commands and runs the handler on its own thread (a slow handler must not
    stall the link's keepalives); every command gets exactly one answer through ``respond``."""

    def __init__(self, respond: Respond, max_bytes: int = MAX_COMMAND_BYTES):
        self.respond = respond
        self.max_bytes = max_bytes
        self.handler: CommandHandler | None = None
        self._queue: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mqtt-commands", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, cmd: Command) -> None:
        """From the network thread: only queues."""
        self._queue.put(cmd)

    def _loop(self) -> None:
        while True:
            cmd = self._queue.get()
            if cmd is None:
                return
            try:
                self.respond(cmd, self.answer(cmd))
            except Exception:
                log.exception("MQTT: failed to answer command %s", cmd.name)

    def answer(self, cmd: Command) -> dict[str, Any]:
        """The response body for one received command (never raises for a bad command)."""
        args, error = parse_command(cmd.raw, self.max_bytes)
        rid = request_id_of(args)
        response: dict[str, Any] = {"command": cmd.name, "request_id": rid}
        full = replace(cmd, args=args, request_id=None if rid is None else str(rid), parse_error=error)
        handler = self.handler
        if handler is None:
            return {**response, "ok": False, "error": "this agent accepts no commands"}
        if error is not None and not getattr(handler, "audits_refusals", False):
            return {**response, "ok": False, "error": error}
        try:
            result = handler(full)
            return {**response, "ok": True, "result": dict(result) if result is not None else {}}
        except CommandError as exc:
            return {**response, "ok": False, "error": str(exc)}
        except RecursionError:
            return {**response, "ok": False, "error": "command too deeply nested"}
        except Exception as exc:
            log.exception("MQTT: command %s failed", cmd.name)
            return {**response, "ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
