"""Remote commands of the agent: a registry of handlers behind the communicator's command hook.

The communicator (``comms``) parses each ``cmd/<name>`` message into a ``Command`` and
answers on ``cmd/response`` with whatever the handler returns, or ``ok: false`` with the
message of a ``CommandError``. This module adds what is the agent's business: which names
exist, an optional authenticity check (signed commands), and an audit record per command.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.comms.base import Command, CommandError

log = logging.getLogger(__name__)

__all__ = ["Command", "CommandError", "CommandRegistry", "require_number"]

Handler = Callable[[Command], "Mapping[str, Any] | None"]


class CommandRegistry:
    """name -> handler; callable as the communicator's single command handler.

    ``verify`` (signed commands) raises CommandError for a command that must not run and
    returns the key id it verified (None for an accepted unsigned command); the handler and
    the audit record see only that verified id as the origin.
    """

    def __init__(self, verify: Callable[[Command], str | None] | None = None,
                 audit: Callable[[dict], None] | None = None):
        self.handlers: dict[str, Handler] = {}
        self.verify = verify
        self.audit = audit

    def register(self, name: str, handler: Handler) -> None:
        self.handlers[name] = handler

    def names(self) -> list[str]:
        return sorted(self.handlers)

    def __call__(self, cmd: Command) -> Mapping[str, Any] | None:
        outcome: dict[str, Any] = {"event": "command", "command": cmd.name, "request_id": cmd.request_id,
                                   "origin": cmd.origin}
        try:
            handler = self.handlers.get(cmd.name)
            if handler is None:
                raise CommandError(f"unknown command '{cmd.name}'; known: {', '.join(self.names())}")
            if self.verify is not None:
                key_id = self.verify(cmd)
                if key_id:
                    cmd = replace(cmd, verified_key_id=key_id)
                    outcome["origin"] = cmd.origin
            result = handler(cmd)
            outcome.update(ok=True)
            return result
        except CommandError as exc:
            outcome.update(ok=False, error=str(exc))
            raise
        except Exception as exc:
            outcome.update(ok=False, error=f"internal error: {exc}")
            raise
        finally:
            if self.audit is not None:
                try:
                    self.audit(outcome)
                except Exception:
                    log.exception("could not write the audit record of command %s", cmd.name)


def require_number(cmd: Command, key: str, low: float, high: float) -> float:
    """The numeric argument ``key``, strictly between ``low`` and ``high``, or a CommandError."""
    value = cmd.args.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError(f"'{key}' must be a number between {low} and {high}")
    if not low < float(value) < high:
        raise CommandError(f"'{key}' {value} is outside ({low}, {high})")
    return float(value)
