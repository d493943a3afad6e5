"""Hostile ``model-*`` commands (issue #12): whoever may publish a command must learn nothing about the
device's files or the office network from the answers, and must not fill the disk.

- ``file://`` is off by default and, when on, confined to ``updates.file_root`` (no '..', no
  symlink out); every failure after the path check is one generic answer: no hash, no size,
  no "no such file";
- http(s) failures echo no remote content (hash, size, the server's reason text);
- once command keys are configured, the commands that change the model must be signed.

No real model is needed: every case is refused before a bundle would be opened.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from functools import partial
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edge_agent.agent.commands import CommandRegistry
from edge_agent.comms.base import Command, CommandError
from edge_agent.config.sections import ModelConfig
from edge_agent.config.updates import UpdatesConfig
from edge_agent.updates.audit import AuditLog
from edge_agent.updates.commands import UpdateCommands
from edge_agent.updates.manager import Settings, UpdateManager
from edge_agent.updates.signed_commands import command_verifier_for, sign_command
from tests.bundles import make_keys

SECRET = (b"root:$6$not-really-a-hash:19000:0:99999:7:::\n" * 80)[:3187]  # a size no config value has
TOPIC = "crackseg/van-1/cmd/model-update"
PREFIX_STATUS = "crackseg/van-1/cmd/model-status"


def manager(state: Path, **updates) -> UpdateManager:
    updates.setdefault("enabled", True)
    return UpdateManager(Settings(UpdatesConfig(**updates), ModelConfig(), state),
                         load_model=lambda p: pytest.fail("no model may be loaded"), swap_model=lambda s: None)


def leaks(text: str, content: bytes, *noise: object) -> list[str]:
    """What of ``content`` (its sha256, its size) shows in ``text`` once the ``noise`` the sender knows
    (its URL, the configured folder, the update id) is taken out."""
    for n in noise:
        text = text.replace(str(n), "")
    found = []
    if hashlib.sha256(content).hexdigest()[:16] in text:
        found.append("sha256")
    if str(len(content)) in text:
        found.append("size")
    return found


# -- file:// --------------------------------------------------------------------------------------
def test_file_urls_are_off_by_default(tmp_path) -> None:
    assert "file" not in UpdatesConfig().allowed_url_schemes
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    m = manager(tmp_path / "state")
    last = m.update(secret.as_uri(), hashlib.sha256(SECRET).hexdigest())
    assert last["stage"] == "failed" and "not allowed on this device" in last["reason"]
    assert leaks(json.dumps(last), SECRET, secret, last["update_id"]) == []
    with pytest.raises(ValidationError, match="file_root"):
        UpdatesConfig(allowed_url_schemes=["https", "file"])


@pytest.fixture
def usb(tmp_path) -> dict[str, Path]:
    """A file_root holding a readable non-bundle file, a link out of it, a FIFO, a folder and a dead end."""
    root = tmp_path / "usb"
    (root / "models").mkdir(parents=True)
    outside = tmp_path / "shadow"
    outside.write_bytes(SECRET)
    inside = root / "models" / "notes.txt"
    inside.write_bytes(SECRET)
    os.symlink(outside, root / "models" / "link.tar.gz")
    os.symlink(tmp_path, root / "up")
    os.mkfifo(root / "models" / "fifo.tar.gz")
    return {"root": root, "outside": outside, "inside": inside}


def test_file_urls_outside_file_root_are_refused_by_the_path_alone(tmp_path, usb) -> None:
    m = manager(tmp_path / "state", allowed_url_schemes=["https", "file"], file_root=usb["root"])
    sha = hashlib.sha256(SECRET).hexdigest()
    for url in (usb["outside"].as_uri(), f"file://{usb['root']}/../shadow", f"file://{usb['root']}/./models/x",
                "file:///etc/shadow", f"file://{usb['root']}"):
        last = m.update(url, sha)
        assert last["stage"] == "failed" and "updates.file_root" in last["reason"], (url, last)
        assert leaks(last["reason"], SECRET, url, usb["root"]) == [], (url, last)


def test_file_failures_under_file_root_are_one_generic_answer(tmp_path, usb) -> None:
    m = manager(tmp_path / "state", allowed_url_schemes=["https", "file"], file_root=usb["root"])
    right, wrong = hashlib.sha256(SECRET).hexdigest(), "ab" * 32
    root = usb["root"]
    cases = {
        "missing": (f"file://{root}/models/missing.tar.gz", wrong, None),
        "wrong sha256": (f"file://{root}/models/notes.txt", wrong, None),
        "wrong size": (f"file://{root}/models/notes.txt", right, len(SECRET) + 1),
        "shorter size": (f"file://{root}/models/notes.txt", right, 10),
        "link out": (f"file://{root}/models/link.tar.gz", right, None),
        "folder link out": (f"file://{root}/up/shadow", right, None),
        "fifo": (f"file://{root}/models/fifo.tar.gz", wrong, None),  # must not hang on open
        "folder": (f"file://{root}/models", wrong, None),
    }
    reasons = {}
    for name, (url, sha, size) in cases.items():
        last = m.update(url, sha, size=size)
        assert last["stage"] == "failed", (name, last)
        assert leaks(last["reason"], SECRET, url, *([size] if size else [])) == [], (name, last)
        reasons[name] = last["reason"].replace(url, "URL").replace(str(size), "SIZE")
    assert len(set(reasons.values())) == 1, reasons
    assert "no such file" not in next(iter(reasons.values()))
    audit = (tmp_path / "state" / "audit.jsonl").read_text()
    assert right[:16] not in audit.replace(right, "") and str(len(SECRET)) not in audit
    if os.geteuid() != 0:  # root reads anything: unreadable files exist only for other users
        usb["inside"].chmod(0)
        last = m.update(f"file://{root}/models/notes.txt", right)
        assert last["reason"].replace(f"file://{root}/models/notes.txt", "URL") == reasons["missing"]


# -- http(s) --------------------------------------------------------------------------------------
class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/teapot":
            self.send_response(418, "SECRET-REASON-PHRASE")
            self.end_headers()
            return
        if self.path == "/ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/secret")
            self.end_headers()
            return
        if self.path == "/huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10 ** 12 + 7))
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def intranet(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "secret.bin").write_bytes(SECRET)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_failures_echo_no_remote_content(tmp_path, intranet) -> None:
    m = manager(tmp_path / "state", max_bundle_bytes=4096, chunk_max_bytes=1024)
    right = hashlib.sha256(SECRET).hexdigest()
    cases = [(f"{intranet}/secret.bin", "ab" * 32, None, "sha256"),
             (f"{intranet}/secret.bin", right, len(SECRET) + 5, "another size"),
             (f"{intranet}/secret.bin", "ab" * 32, 4000, "another size"),
             (f"{intranet}/teapot", right, None, "HTTP 418"),
             (f"{intranet}/ftp", right, None, "redirect"),
             (f"{intranet}/huge", right, None, "max_bundle_bytes")]
    for url, sha, size, expect in cases:
        last = m.update(url, sha, size=size)
        text = json.dumps(last)
        assert last["stage"] == "failed" and expect in last["reason"], (url, last)
        assert leaks(last["reason"], SECRET, url, *([size] if size else [])) == [], (url, last)
        assert "SECRET-REASON" not in text and str(10 ** 12) not in text


# -- signatures for the commands that change the model ----------------------------------------------
@pytest.fixture
def keyed(tmp_path) -> tuple[Ed25519PrivateKey, UpdatesConfig]:
    key, pub = make_keys(tmp_path / "office-key")
    return key, UpdatesConfig(enabled=True, command_public_keys=[{"key_id": "office", "file": pub}])


def test_with_command_keys_model_changes_must_be_signed(tmp_path, keyed) -> None:
    key, cfg = keyed
    assert not cfg.require_signed_commands and cfg.require_signed_update_commands
    m = UpdateManager(Settings(cfg, ModelConfig(), tmp_path), load_model=lambda p: p, swap_model=lambda s: None)
    registry = CommandRegistry(verify=command_verifier_for(cfg, tmp_path), audit=m.audit)
    m.register_commands(registry)
    registry.register("pause", lambda c: {"paused": True})
    prefix = "crackseg/van-1/cmd/"
    for name, body in [("model-update", {"url": "https://x.example/a.tar.gz", "sha256": "ab" * 32}),
                       ("model-chunk", {"transfer_id": "t", "index": 0, "count": 1, "sha256": "ab" * 32,
                                        "data": "AA=="}),
                       ("model-rollback", {})]:
        with pytest.raises(CommandError, match="must be signed"):
            registry(Command(name, {**body, "key_id": "office"}, prefix + name))
    assert registry(Command("model-status", {}, prefix + "model-status"))["stage"] == "idle"
    assert registry(Command("pause", {}, prefix + "pause")) == {"paused": True}
    signed = sign_command(key, prefix + "model-rollback", {}, "office")
    with pytest.raises(CommandError, match="nothing to roll back"):  # verified: it reaches the manager
        registry(Command("model-rollback", signed, prefix + "model-rollback"))
    # the adapter fails closed if the agent did not verify (no verifier wired): no verified key, no change
    with pytest.raises(CommandError, match="must be signed"):
        UpdateCommands(m).rollback(Command("model-rollback", signed, prefix + "model-rollback"))
    origins = [(r["command"], r["outcome"], r["origin"]) for r in AuditLog(tmp_path / "audit.jsonl").entries()]
    assert origins[-1] == ("model-rollback", "refused", "key:office")
    assert ("model-update", "refused", prefix + "model-update") in origins


def test_the_signature_rule_for_model_changes_can_be_relaxed(tmp_path, keyed) -> None:
    _, cfg = keyed
    relaxed = cfg.model_copy(update={"require_signed_update_commands": False})
    m = UpdateManager(Settings(relaxed, ModelConfig(), tmp_path), load_model=lambda p: p, swap_model=lambda s: None)
    registry = CommandRegistry(verify=command_verifier_for(relaxed, tmp_path))
    m.register_commands(registry)
    with pytest.raises(CommandError, match="nothing to roll back"):
        registry(Command("model-rollback", {}, "crackseg/van-1/cmd/model-rollback"))


def test_a_command_with_unencodable_text_is_still_audited(tmp_path) -> None:
    """A lone surrogate (valid in JSON, not in UTF-8) must not make the audit record disappear."""
    m = manager(tmp_path)
    registry = CommandRegistry(audit=m.audit)
    m.register_commands(registry)
    registry(Command("model-status", {"note": "\ud800"}, PREFIX_STATUS, request_id="r-\ud800"))
    records = list(AuditLog(tmp_path / "audit.jsonl").entries())
    assert [(r["command"], r["request_id"]) for r in records] == [("model-status", "r-\ud800")]
