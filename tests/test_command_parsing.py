"""Hostile command payloads: every one gets an answer and an audit line, none reaches a handler unparsed.

The dispatcher and the registry run in process here (no broker): what arrives on cmd/<name> is
bytes from anyone allowed to publish there.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.agent.commands import CommandRegistry
from edge_agent.comms.base import Command
from edge_agent.comms.commands import MAX_COMMAND_BYTES, CommandDispatcher, parse_command


def registry_with_audit() -> tuple[CommandRegistry, list[dict], list[Command]]:
    audit: list[dict] = []
    seen: list[Command] = []
    reg = CommandRegistry(audit=audit.append)
    reg.register("ping", lambda cmd: seen.append(cmd) or {"pong": True})
    return reg, audit, seen


def answer(raw: bytes, name: str = "ping") -> tuple[dict, list[dict], list[Command]]:
    reg, audit, seen = registry_with_audit()
    dispatcher = CommandDispatcher(respond=lambda cmd, resp: None)
    dispatcher.handler = reg
    return dispatcher.answer(Command(name=name, args={}, topic=f"crackseg/v/cmd/{name}", raw=raw)), audit, seen


def test_deeply_nested_json_is_answered_and_audited():
    response, audit, seen = answer(b"[" * 1000)
    assert response["ok"] is False and "nests deeper" in response["error"]
    assert seen == [] and len(audit) == 1 and audit[0]["ok"] is False
    response, audit, _ = answer(b'{"a":' * 5000 + b"1" + b"}" * 5000)
    assert response["ok"] is False and "nests deeper" in response["error"] and audit


def test_oversized_and_non_object_payloads_are_refused_with_reasons():
    response, audit, seen = answer(b'{"x": "' + b"a" * (MAX_COMMAND_BYTES + 10) + b'"}')
    assert response["ok"] is False and "bytes" in response["error"] and seen == [] and audit
    for raw, why in [(b"\xff\xfe", "UTF-8"), (b"[1, 2]", "JSON object"), (b"nul", "JSON"), (b'"text"', "JSON object")]:
        response, audit, seen = answer(raw)
        assert response["ok"] is False and why in response["error"] and seen == [] and audit


def test_well_formed_command_still_runs():
    response, audit, seen = answer(json.dumps({"request_id": "r1"}).encode())
    assert response == {"command": "ping", "request_id": "r1", "ok": True, "result": {"pong": True}}
    assert len(seen) == 1 and audit[0]["ok"] is True


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8),
                                                                                              children, max_size=5),
                           max_leaves=30)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                 st.integers(1, 400).map(lambda n: b"[" * n), st.integers(1, 400).map(lambda n: b'{"a":' * n)))
def test_any_payload_gets_one_answer_and_never_an_exception(raw: bytes):
    response, audit, seen = answer(raw)
    assert set(response) >= {"command", "request_id", "ok"}
    assert isinstance(response["ok"], bool) and len(audit) == 1
    json.dumps(response)  # the answer itself is always sendable
    args, error = parse_command(raw)
    assert (error is None) == response["ok"]
    assert isinstance(args, dict)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["request_id", "id", "msg_id", "value", "key_id", "sig"]),
                       json_values, max_size=6))
def test_request_ids_of_any_type_are_echoed_as_text_or_number(body: dict):
    response, _, _ = answer(json.dumps(body).encode())
    rid = response["request_id"]
    assert rid is None or isinstance(rid, (str, int)) and not isinstance(rid, bool)
