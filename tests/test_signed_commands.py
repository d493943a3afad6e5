"""Signed commands: accepted when signed by a trusted key, fresh and new; refused otherwise,
also after a restart; the office-side signing tool; the audit record of each decision."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edge_agent.agent.commands import CommandRegistry
from edge_agent.comms.base import Command, CommandError
from edge_agent.config.updates import UpdatesConfig
from edge_agent.updates.audit import AuditLog
from edge_agent.updates.signed_commands import (
    NONCES_NAME,
    CommandKeyError,
    NonceStore,
    command_verifier_for,
    load_command_keys,
    make_command_verifier,
    sign_command,
)

REPO = Path(__file__).resolve().parents[1]
TOPIC = "crackseg/van-07/cmd/model-update"
BODY = {"url": "https://models.example/tiny-2.0.0.tar.gz", "sha256": "ab" * 32, "request_id": "r1"}


@pytest.fixture(scope="module")
def office(tmp_path_factory) -> tuple[Ed25519PrivateKey, Path, Path]:
    """The office key pair: (key, private.pem, public.pem)."""
    folder = tmp_path_factory.mktemp("office")
    key = Ed25519PrivateKey.generate()
    priv, pub = folder / "private.pem", folder / "public.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, priv, pub


def config(pub: Path, **kw) -> UpdatesConfig:
    kw.setdefault("require_signed_commands", True)
    return UpdatesConfig(enabled=True, command_public_keys=[{"key_id": "office", "file": pub}], **kw)


def cmd(body: dict, topic: str = TOPIC) -> Command:
    return Command(name=topic.rsplit("/", 1)[-1], args=body, topic=topic, raw=json.dumps(body).encode())


def test_signing_tool_output_is_accepted_once(office, tmp_path) -> None:
    _, priv, pub = office
    proc = subprocess.run([sys.executable, "-m", "edge_agent.updates.signed_commands", "sign", "--key", str(priv),
                           "--key-id", "office", "--topic", TOPIC, "--body", json.dumps(BODY)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    signed = json.loads(proc.stdout)
    assert {k: signed[k] for k in BODY} == BODY and signed["key_id"] == "office"
    assert abs(signed["ts"] - time.time()) < 60 and len(signed["nonce"]) >= 16
    verify = make_command_verifier(config(pub), tmp_path)
    assert verify(cmd(signed)) == "office"  # accepted: the key id that was verified
    with pytest.raises(CommandError, match="used before"):
        verify(cmd(signed))
    # a restarted agent remembers the nonce (persisted), the replay window does not reopen
    with pytest.raises(CommandError, match="used before"):
        make_command_verifier(config(pub), tmp_path)(cmd(signed))


def test_signing_tool_errors_are_one_line(office, tmp_path) -> None:
    _, priv, _ = office
    for args, match in [(["--key", str(tmp_path / "nope.pem")], "not found"),
                        (["--key", str(priv), "--body", "[1]"], "JSON object"),
                        (["--key", str(priv), "--body", '{"ts": 1}'], "added by signing")]:
        proc = subprocess.run([sys.executable, "-m", "edge_agent.updates.signed_commands", "sign", "--topic", TOPIC,
                               *args], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 2 and match in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("case, match", [
    ("unsigned", "not signed"),
    ("changed-body", "bad signature"),
    ("other-device", "bad signature"),
    ("other-command", "bad signature"),
    ("other-key", "bad signature"),
    ("unknown-key-id", "unknown key_id"),
    ("garbage-sig", "not a base64 Ed25519 signature"),
    ("stale", "ago, more than updates.command_max_age_s"),
    ("future", "in the future"),
    ("bad-nonce", "'nonce' must be"),
])
def test_refused_commands(office, tmp_path, case, match) -> None:
    key, _, pub = office
    verify = make_command_verifier(config(pub, command_max_age_s=300), tmp_path)
    topic = TOPIC
    if case == "unsigned":
        body = dict(BODY)
    elif case == "other-key":
        body = sign_command(Ed25519PrivateKey.generate(), TOPIC, BODY, "office")
    elif case == "stale":
        body = sign_command(key, TOPIC, BODY, "office", ts=time.time() - 301)
    elif case == "future":
        body = sign_command(key, TOPIC, BODY, "office", ts=time.time() + 301)
    elif case == "bad-nonce":
        body = sign_command(key, TOPIC, BODY, "office", nonce="short")
    else:
        body = sign_command(key, TOPIC, BODY, "office")
    if case == "changed-body":
        body["url"] = "https://evil.example/x.tar.gz"
    elif case == "other-device":
        topic = "crackseg/van-08/cmd/model-update"
    elif case == "other-command":
        topic = "crackseg/van-07/cmd/model-rollback"
    elif case == "unknown-key-id":
        body["key_id"] = "intern"
    elif case == "garbage-sig":
        body["sig"] = "bm90IGEgc2lnbmF0dXJl"
    with pytest.raises(CommandError, match=match):
        verify(cmd(body, topic))


def test_freshness_window_and_nonce_expiry(office, tmp_path) -> None:
    key, _, pub = office
    now = [10_000.0]
    store = NonceStore(tmp_path / NONCES_NAME, clock=lambda: now[0])
    verify = make_command_verifier(config(pub, command_max_age_s=60), tmp_path)
    verify.nonces, verify.clock = store, (lambda: now[0])
    body = sign_command(key, TOPIC, BODY, "office", ts=now[0] - 59, nonce="nonce-0001")
    verify(cmd(body))
    with pytest.raises(CommandError, match="used before"):
        verify(cmd(body))
    now[0] += 2  # the command is now too old anyway: the nonce may be forgotten
    with pytest.raises(CommandError, match="more than updates.command_max_age_s"):
        verify(cmd(body))
    assert NonceStore(tmp_path / NONCES_NAME, clock=lambda: now[0])._seen == {}
    # many commands: the file is compacted, not grown forever
    for i in range(300):
        now[0] += 1
        verify(cmd(sign_command(key, TOPIC, BODY, "office", ts=now[0], nonce=f"nonce-{i:06d}")))
    lines = (tmp_path / NONCES_NAME).read_text().splitlines()
    assert len(lines) <= 2 * 61 + 101


def test_unsigned_commands_pass_when_not_required_but_bad_signatures_never(office, tmp_path) -> None:
    key, _, pub = office
    verify = make_command_verifier(config(pub, require_signed_commands=False, require_signed_update_commands=False),
                                   tmp_path)
    assert verify(cmd(dict(BODY))) is None  # accepted, unsigned: no key id
    assert verify(cmd({**BODY, "key_id": "office"})) is None  # a claimed key id is not a verified one
    assert verify(cmd(sign_command(key, TOPIC, BODY, "office"))) == "office"
    body = sign_command(key, TOPIC, BODY, "office")
    body["sha256"] = "cd" * 32
    with pytest.raises(CommandError, match="bad signature"):
        verify(cmd(body))


def test_registry_audits_accepted_and_refused_commands(office, tmp_path) -> None:
    key, _, pub = office
    audit = AuditLog(tmp_path / "audit.jsonl")
    registry = CommandRegistry(verify=make_command_verifier(config(pub), tmp_path), audit=audit.write_command)
    registry.register("model-update", lambda c: {"accepted": True})
    good = sign_command(key, TOPIC, BODY, "office")
    assert registry(cmd(good)) == {"accepted": True}
    with pytest.raises(CommandError):
        registry(cmd(good))  # replay
    with pytest.raises(CommandError):
        registry(cmd(dict(BODY)))  # unsigned
    records = list(audit.entries())
    assert [(r["outcome"], r["origin"]) for r in records] == [("ok", "key:office"), ("refused", TOPIC),
                                                              ("refused", TOPIC)]
    assert "used before" in records[1]["error"] and "not signed" in records[2]["error"]
    assert all(r["command"] == "model-update" and r["request_id"] is None for r in records)


def test_keys_from_systemd_credentials_and_config_errors(office, tmp_path) -> None:
    _, _, pub = office
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "command-key").write_bytes(pub.read_bytes())
    (creds / "empty").write_bytes(b"")
    cfg = UpdatesConfig(command_public_keys=[{"key_id": "office", "credential": "command-key"}])
    keys = load_command_keys(cfg, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert list(keys) == ["office"]
    with pytest.raises(CommandKeyError, match="'empty' is empty"):
        load_command_keys(UpdatesConfig(command_public_keys=[{"key_id": "x", "credential": "empty"}]),
                          {"CREDENTIALS_DIRECTORY": str(creds)})
    with pytest.raises(ValidationError, match="needs at least one entry in command_public_keys"):
        UpdatesConfig(require_signed_commands=True)
    with pytest.raises(ValidationError, match="given more than once"):
        UpdatesConfig(command_public_keys=[{"key_id": "a", "file": pub}, {"key_id": "a", "file": pub}])
    with pytest.raises(ValidationError, match="exactly one of file or credential"):
        UpdatesConfig(command_public_keys=[{"key_id": "a"}])
    with pytest.raises(ValidationError, match="Extra inputs"):
        UpdatesConfig(enable=True)


def test_a_claimed_key_id_is_never_audited_as_the_origin(office, tmp_path) -> None:
    """Unsigned commands are allowed here, and one claims key_id office-2024: the audit shows the topic."""
    key, _, pub = office
    audit = AuditLog(tmp_path / "audit.jsonl")
    verifier = command_verifier_for(config(pub, require_signed_commands=False), tmp_path)
    assert verifier is not None  # keys are configured: signed commands are verified although not required
    registry = CommandRegistry(verify=verifier, audit=audit.write_command)
    seen: list[str] = []
    registry.register("pause", lambda c: seen.append(c.origin) or {"paused": True})
    pause = "crackseg/van-07/cmd/pause"
    registry(cmd({"key_id": "office-2024"}, pause))
    registry(cmd(sign_command(key, pause, {}, "office"), pause))
    forged = sign_command(Ed25519PrivateKey.generate(), pause, {}, "office")
    with pytest.raises(CommandError, match="bad signature"):
        registry(cmd(forged, pause))
    assert seen == [pause, "key:office"]
    assert [(r["outcome"], r["origin"]) for r in audit.entries()] == [("ok", pause), ("ok", "key:office"),
                                                                       ("refused", pause)]


def test_no_verifier_without_command_keys(tmp_path) -> None:
    assert command_verifier_for(UpdatesConfig(), tmp_path) is None
