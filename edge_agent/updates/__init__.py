"""Over-the-air model updates: verified download, self-test, atomic switch, watch and rollback.

- ``store``: installed bundles under ``<state_dir>/models`` with ``active``/``previous`` links;
- ``durable``: fsynced writes, atomic link switches and the crash-test hook ``kill_point``;
- ``download``: http/https/file downloads; ``chunks``: chunked transfer over MQTT;
- ``manager``: ``UpdateManager``, the flow from a command to a confirmed or rolled back model;
- ``state``: its stages (``Stage``) and the lock that guards only their transitions;
- ``recovery``: what to load at start, a switch being watched when the agent restarted;
- ``commands``: the ``model-*`` commands as manager calls; ``device``: loading and self-testing
  a model with the device's settings;
- ``watch``: the in-service rules;
- ``signed_commands``: Ed25519-signed, fresh, one-time commands;
- ``audit``: ``<state_dir>/audit.jsonl``;
- ``cli``: ``crackseg-edge model list|install|activate|rollback``.
See docs/updates.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Resolved on first use: keeps ``import edge_agent.updates`` light and lets
# ``python -m edge_agent.updates.signed_commands`` run without a double import.
_EXPORTS = {
    "AuditLog": "audit", "ChunkAssembler": "chunks", "DownloadArea": "download", "DownloadError": "download",
    "TransferError": "chunks", "Settings": "device", "UpdateManager": "manager", "model_loader": "device",
    "Stage": "state", "UpdateCommands": "commands", "register_commands": "commands",
    "CommandVerifier": "signed_commands", "make_command_verifier": "signed_commands",
    "sign_command": "signed_commands", "ModelStore": "store", "StoreError": "store", "UpdateError": "store",
    "ServiceWatch": "watch", "WatchDecision": "watch", "WatchRules": "watch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_agent.updates' has no attribute {name!r}")
    return getattr(import_module(f"edge_agent.updates.{module}"), name)
