"""Over-the-air model updates: verified download, self-test, atomic switch, watch and rollback.

- ``store``: installed bundles under ``<state_dir>/models`` with ``active``/``previous`` links;
- ``download``: http/https/file downloads and chunked transfer over MQTT;
- ``manager``: ``UpdateManager``, the ``model-update``/``model-chunk``/``model-rollback``/
  ``model-status`` commands and the in-service watch;
- ``signed_commands``: Ed25519-signed, fresh, one-time commands;
- ``audit``: ``<state_dir>/audit.jsonl``;
- ``cli``: ``crackseg-edge model list|activate|rollback``.
See docs/updates.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Resolved on first use: keeps ``import edge_agent.updates`` light and lets
# ``python -m edge_agent.updates.signed_commands`` run without a double import.
_EXPORTS = {
    "AuditLog": "audit", "ChunkAssembler": "download", "DownloadArea": "download", "DownloadError": "download",
    "TransferError": "download", "Settings": "manager", "UpdateManager": "manager", "model_loader": "manager",
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
