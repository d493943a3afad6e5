"""Secrets: never in the config file; read from a systemd credential, a file or a variable.

Why: a config file is copied, diffed and committed; a password in it would leak the broker
of a whole fleet. The file names *where* a secret is (``password_credential: mqtt-password``)
and this module reads it at the moment it is needed.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.config.errors import ConfigIssue, SecretError
from edge_agent.config.yaml_lines import KeyPath, format_key_path

log = logging.getLogger(__name__)

# Keys whose value must never be written into the YAML in clear text.
SECRET_KEYS = frozenset({"password", "passwd", "passphrase", "secret", "token", "api_key", "private_key"})


def reject_clear_text_secrets(data: Any, path: KeyPath, lines: Mapping[KeyPath, int],
                              source: str) -> list[ConfigIssue]:
    """Report clear-text secret keys and drop them from ``data`` (so they are reported once)."""
    issues = []
    if isinstance(data, dict):
        for key, value in list(data.items()):
            if isinstance(key, str) and key.lower() in SECRET_KEYS and value is not None:
                issues.append(ConfigIssue(
                    source, lines.get(path + (key,)), format_key_path(path + (key,)),
                    f"secrets must not be written in the config file: use {key}_file: /path/to/file (mode 600), "
                    f"{key}_credential: NAME (systemd LoadCredential=) or {key}_env: VARIABLE; see "
                    "docs/operations.md"))
                del data[key]
            else:
                issues.extend(reject_clear_text_secrets(value, path + (key,), lines, source))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            issues.extend(reject_clear_text_secrets(item, path + (i,), lines, source))
    return issues


def read_secret(*, file: str | Path | None = None, credential: str | None = None, env_var: str | None = None,
                what: str = "secret", environ: Mapping[str, str] | None = None) -> str | None:
    """A secret from a systemd credential, a file, or a variable (first configured wins); None if none.

    An empty credential counts as "not configured": install.sh creates every ``LoadCredential=``
    source empty (a missing source would fail the start), so the service runs before the
    operator has provisioned, e.g., a model-signing key.
    """
    env = os.environ if environ is None else environ
    if credential:
        target = credential_path(credential, what, env)
        if target is None:
            return None
        try:
            return target.read_text(encoding="utf-8").rstrip("\r\n") or None
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"{what} credential '{credential}'", f"cannot read {target}: {exc}") from None
    if file:
        target = Path(file).expanduser()
        try:
            st = target.stat()
            value = target.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise SecretError(f"{what} file {target}", "not found: create it (chmod 600) or fix the path") from None
        except OSError as exc:
            raise SecretError(f"{what} file {target}", f"cannot read it: {exc.strerror or exc}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s file %s is readable by other users; chmod 600 it", what, target)
        return value or None
    if env_var:
        return env.get(env_var) or None
    return None


def credential_path(name: str, what: str = "secret", environ: Mapping[str, str] | None = None) -> Path | None:
    """Path of systemd credential ``name`` (for binary-safe consumers such as key loaders); None if empty."""
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise SecretError(f"{what} credential '{name}'",
                          "$CREDENTIALS_DIRECTORY is not set (the agent was not started by systemd with "
                          f"LoadCredential={name}:...); outside systemd use a *_file setting instead")
    path = Path(directory) / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SecretError(f"{what} credential '{name}'",
                          f"not passed to the service: add LoadCredential={name}:/etc/crackseg-edge/credentials/"
                          f"{name} to the unit (systemctl edit crackseg-edge)") from None
    return path if size > 0 else None


def model_public_key(model: Any, environ: Mapping[str, str] | None = None) -> Path | None:
    """The bundle-signing public key file of ``cfg.model`` (file or systemd credential), or None.

    None with ``require_signature`` is an error here rather than at the first model update.
    """
    path: Path | None = None
    if model.public_key_file is not None:
        path = Path(model.public_key_file)
    elif model.public_key_credential:
        path = credential_path(model.public_key_credential, "model.public_key_credential", environ)
    if path is None and model.require_signature:
        raise SecretError("model.require_signature", "is true but no public key is provisioned: put the ed25519 "
                          "public key in /etc/crackseg-edge/credentials/model-signing.pub (or set "
                          "model.public_key_file)")
    return path


