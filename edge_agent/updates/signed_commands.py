"""Signed commands: Ed25519 over the command, its topic, a timestamp and a one-time nonce.

Why on top of broker ACLs: the ACL says which *MQTT account* may publish on a device's
command topics; a leaked back-office password (or a misconfigured bridge) would still let
anyone order a model update. With ``updates.require_signed_commands`` the device accepts
only commands signed by a key it was provisioned with, and only once, and only fresh.

What is signed (bytes)::

    b"crackseg-command-v1\\n" + TOPIC + b"\\n" + canonical JSON of the body without "sig"

- TOPIC (``crackseg/van-07/cmd/model-update``) binds the signature to one device and one
  command name: a signed ``pause`` cannot be replayed as ``model-rollback`` or on van-08.
- canonical JSON: keys sorted, no spaces (``separators=(",", ":")``), UTF-8, no ASCII
  escaping. The body must carry ``ts`` (unix seconds), ``nonce`` (8-128 characters of
  letters, digits, ``_`` or ``-``) and ``key_id``; ``sig`` is the base64 signature.

Checks, in order: signature (so unauthenticated junk never reaches the nonce store), ``ts``
within ``command_max_age_s`` of the device clock (both directions), nonce not seen before.
Nonces are kept in ``<state_dir>/command-nonces.jsonl`` (fsynced before the command runs)
until their command would be too old anyway, so a restart does not reopen a replay window.

Sign on the office side::

    python -m edge_agent.updates.signed_commands sign --key private.pem --key-id office \\
        --topic crackseg/van-07/cmd/model-update --body '{"url": "https://...", "sha256": "..."}'
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import math
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge_agent.comms.base import Command, CommandError
from edge_agent.updates.durable import write_file_synced
from edge_agent.updates.store import UpdateError
from edge_agent.util.files import append_line_synced

log = logging.getLogger(__name__)

CONTEXT = b"crackseg-command-v1\n"
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
NONCES_NAME = "command-nonces.jsonl"
SIGNATURE_FIELDS = ("ts", "nonce", "key_id", "sig")
# The commands that change the model: signed by default once command keys are configured
# (updates.require_signed_update_commands), even when unsigned commands are otherwise allowed.
UPDATE_COMMANDS = frozenset({"model-update", "model-chunk", "model-chunk-abort", "model-rollback"})


class CommandKeyError(UpdateError):
    """A configured command key (file or credential) that cannot be used."""


def canonical_json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def signing_message(topic: str, body: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed (see the module docstring)."""
    return CONTEXT + topic.encode("utf-8") + b"\n" + canonical_json({k: v for k, v in body.items() if k != "sig"})


def sign_command(private_key: Ed25519PrivateKey, topic: str, body: Mapping[str, Any], key_id: str,
                 ts: float | None = None, nonce: str | None = None) -> dict:
    """``body`` plus ts, nonce, key_id and sig, ready to publish as JSON on ``topic``."""
    clash = [k for k in SIGNATURE_FIELDS if k in body]
    if clash:
        raise ValueError(f"the body already has {', '.join(clash)}; these fields are added by signing")
    signed = {**body, "ts": int(time.time()) if ts is None else ts, "nonce": nonce or secrets.token_urlsafe(18),
              "key_id": key_id}
    signed["sig"] = base64.b64encode(private_key.sign(signing_message(topic, signed))).decode("ascii")
    return signed


class NonceStore:
    """Nonces seen, each until its command would be refused as too old; persisted as JSON lines."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._lines = 0
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        now = self.clock()
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                key, expires = f"{rec['k']}\n{rec['n']}", float(rec["exp"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a power cut
            if expires > now:
                self._seen[key] = max(expires, self._seen.get(key, 0.0))
        self._compact()

    def _compact(self) -> None:
        data = "".join(json.dumps({"k": k.split("\n", 1)[0], "n": k.split("\n", 1)[1], "exp": exp}) + "\n"
                       for k, exp in self._seen.items())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file_synced(self.path, data.encode("utf-8"))
        self._lines = len(self._seen)

    def check_and_remember(self, key_id: str, nonce: str, expires: float) -> bool:
        """True if new (and now durably remembered), False if it was seen before (a replay)."""
        key = f"{key_id}\n{nonce}"
        with self._lock:
            now = self.clock()
            if self._seen.get(key, 0.0) > now:
                return False
            self._seen = {k: e for k, e in self._seen.items() if e > now}
            self._seen[key] = expires
            if self._lines > 2 * len(self._seen) + 100:
                self._compact()
                return True
            line = json.dumps({"k": key_id, "n": nonce, "exp": expires}) + "\n"
            append_line_synced(self.path, line)
            self._lines += 1
            return True


class CommandVerifier:
    """``CommandRegistry(verify=...)``: the key id a command was verified with, or a CommandError.

    Returns None for an unsigned command that may run unsigned. Why return the id rather
    than let callers read ``key_id`` from the payload: the payload is a claim anybody who may
    publish can make; only the id returned here was proven by a signature, and only that one
    may appear as a command's origin (``Command.origin``) in answers and the audit log.
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey], max_age_s: float, nonces: NonceStore,
                 required: bool = True, clock: Callable[[], float] = time.time,
                 required_for: frozenset[str] = frozenset()):
        self.keys = dict(keys)
        self.max_age_s = float(max_age_s)
        self.nonces = nonces
        self.required = required
        self.required_for = required_for  # command names that need a signature even when not `required`
        self.clock = clock

    def __call__(self, cmd: Command) -> str | None:
        args = cmd.args
        if "sig" not in args:
            if self.required:
                raise CommandError("command refused: not signed, and this device accepts only signed commands "
                                   "(add ts, nonce, key_id and sig; see docs/updates.md)")
            if cmd.name in self.required_for:
                raise CommandError(f"command refused: {cmd.name} must be signed on this device (command keys are "
                                   "configured: updates.require_signed_update_commands); add ts, nonce, key_id "
                                   "and sig, see docs/updates.md")
            return None
        sig_text, key_id, ts, nonce = args.get("sig"), args.get("key_id"), args.get("ts"), args.get("nonce")
        if not isinstance(key_id, str) or key_id not in self.keys:
            raise CommandError(f"command refused: unknown key_id {key_id!r} (this device trusts: "
                               f"{', '.join(sorted(self.keys)) or 'no key'})")
        try:
            sig = base64.b64decode(sig_text if isinstance(sig_text, str) else "", validate=True)
        except (binascii.Error, ValueError):
            sig = b""
        if len(sig) != 64:
            raise CommandError("command refused: 'sig' is not a base64 Ed25519 signature (64 bytes)")
        try:
            message = signing_message(cmd.topic, args)
        except (ValueError, RecursionError):  # UnicodeEncodeError (lone surrogates) is a ValueError
            raise CommandError("command refused: the body cannot be put in canonical JSON (NaN, infinity, invalid "
                               "Unicode or nested too deeply)") from None
        try:
            self.keys[key_id].verify(sig, message)
        except InvalidSignature:
            raise CommandError(f"command refused: bad signature for key_id '{key_id}' (the body or topic was "
                               "changed after signing, or another key signed it)") from None
        try:
            ts_s = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else math.nan
        except OverflowError:
            ts_s = math.nan
        if not math.isfinite(ts_s):
            raise CommandError("command refused: signed commands need 'ts' (unix seconds)")
        now = self.clock()
        age = now - ts_s
        if age > self.max_age_s:
            raise CommandError(f"command refused: signed {age:.0f} s ago, more than updates.command_max_age_s "
                               f"({self.max_age_s:.0f} s); sign it again (and check the sender's clock)")
        if -age > self.max_age_s:
            raise CommandError(f"command refused: its ts is {-age:.0f} s in the future, more than "
                               f"updates.command_max_age_s ({self.max_age_s:.0f} s); check the clocks of sender "
                               "and device")
        if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
            raise CommandError("command refused: 'nonce' must be 8-128 letters, digits, '_' or '-'")
        if not self.nonces.check_and_remember(key_id, nonce, ts_s + self.max_age_s):
            raise CommandError(f"command refused: nonce {nonce} was used before (a replayed command)")
        return key_id


def load_command_keys(cfg: Any, environ: Mapping[str, str] | None = None) -> dict[str, Ed25519PublicKey]:
    """key_id -> public key from ``updates.command_public_keys`` (files or systemd credentials)."""
    from edge_agent.bundle.signing import SignatureError, load_public_key
    from edge_agent.config import SecretError, credential_path

    keys: dict[str, Ed25519PublicKey] = {}
    for entry in cfg.command_public_keys:
        try:
            path = Path(entry.file) if entry.file else credential_path(entry.credential, "command key", environ)
        except SecretError as exc:
            raise CommandKeyError(f"updates.command_public_keys '{entry.key_id}': {exc}") from None
        if path is None:
            raise CommandKeyError(f"updates.command_public_keys '{entry.key_id}': credential '{entry.credential}' "
                                  "is empty; provision the public key or remove the entry")
        try:
            keys[entry.key_id] = load_public_key(path)
        except SignatureError as exc:
            raise CommandKeyError(f"updates.command_public_keys '{entry.key_id}': {exc}") from None
    return keys


def make_command_verifier(config: Any, state_dir: str | Path,
                          environ: Mapping[str, str] | None = None) -> CommandVerifier:
    """The verifier for ``CommandRegistry(verify=...)`` from an ``UpdatesConfig``."""
    keys = load_command_keys(config, environ)
    return CommandVerifier(keys, config.command_max_age_s, NonceStore(Path(state_dir) / NONCES_NAME),
                           required=bool(config.require_signed_commands),
                           required_for=UPDATE_COMMANDS if config.signed_update_commands_required else frozenset())


def command_verifier_for(config: Any, state_dir: str | Path,
                         environ: Mapping[str, str] | None = None) -> CommandVerifier | None:
    """The agent's verifier: one whenever command keys are configured, None when there are none.

    Why not only when signatures are required: with unsigned commands allowed, a signed one
    must still be verified, so that its origin is the proven key (and a forged signature is
    refused, not waved through as "unsigned").
    """
    if not getattr(config, "command_public_keys", None):
        return None
    return make_command_verifier(config, state_dir, environ)


# -- command line (office side) -------------------------------------------------------------
def _load_private_key(path: Path) -> Ed25519PrivateKey:
    if not path.is_file():
        raise CommandKeyError(f"private key {path} not found (create a pair with 'crackseg-convert keygen --out DIR')")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise CommandKeyError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CommandKeyError(f"{path}: is a {type(key).__name__}, not an Ed25519 private key")
    return key


def _read_body(text: str) -> dict:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CommandKeyError(f"--body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise CommandKeyError("--body must be a JSON object")
    return body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_agent.updates.signed_commands",
                                description="Sign a crackseg-edge command (prints the JSON body to publish).")
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("sign", help="add ts, nonce, key_id and sig to a command body")
    s.add_argument("--key", required=True, type=Path, help="Ed25519 private key (PEM)")
    s.add_argument("--key-id", default="office", help="the key_id the devices know this key by (default: office)")
    s.add_argument("--topic", required=True, help="the command topic, e.g. crackseg/van-07/cmd/model-update")
    s.add_argument("--body", default="{}", help="JSON object, @FILE, or - for stdin (default: {})")
    args = p.parse_args(argv)
    try:
        body = _read_body(args.body)
        signed = sign_command(_load_private_key(args.key), args.topic, body, args.key_id)
    except (CommandKeyError, ValueError, OSError) as exc:
        print(f"signed_commands: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(signed, separators=(",", ":"), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
