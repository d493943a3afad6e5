"""Remote commands of the agent: a registry of handlers behind the communicator's command hook.

The communicator (``comms``) parses each ``cmd/<name>`` message into a ``Command`` and
answers on ``cmd/response`` with whatever the handler returns, or ``ok: false`` with the
message of a ``CommandError``. This module adds what is the agent's business: which names
exist, an optional authenticity check (signed commands), an audit record per command, and
the agent's own handlers (``AgentCommands``: ping, status, pause, resume, snapshot,
set-threshold, reload-config).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.comms.base import Command, CommandError

if TYPE_CHECKING:
    from edge_agent.agent.pipeline import ModelSlot
    from edge_agent.agent.reporter import Reporter
    from edge_agent.agent.stats import PipelineStats
    from edge_agent.config.agent import AgentConfig

log = logging.getLogger(__name__)

__all__ = ["AgentCommands", "Command", "CommandError", "CommandRegistry", "ConfigHolder", "PauseSwitch",
           "require_number"]

Handler = Callable[[Command], "Mapping[str, Any] | None"]


class CommandRegistry:
    """name -> handler; callable as the communicator's single command handler.

    ``verify`` (signed commands) raises CommandError for a command that must not run and
    returns the key id it verified (None for an accepted unsigned command); the handler and
    the audit record see only that verified id as the origin.
    """

    audits_refusals = True  # unreadable payloads are passed in (with parse_error) to be refused and audited here

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
            if cmd.parse_error:
                raise CommandError(f"{cmd.parse_error}; nothing was done")
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


@dataclass
class ConfigHolder:
    """The running config, shared by the agent and reload-config (which replaces parts of it)."""

    current: AgentConfig
    path: Path | None = None
    overrides: Mapping[str, Any] | None = None


class PauseSwitch:
    """Why frames are not being accepted: by command, by the memory guard, or both.

    The inference stage reads one event; the two reasons are kept apart so ``resume`` cannot
    undo a pause the memory guard needs, and the guard cannot undo an operator's pause.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self.by_command = False
        self.by_memory = False

    def _apply(self) -> None:
        if self.by_command or self.by_memory:
            self.event.set()
        else:
            self.event.clear()

    def set(self, *, command: bool | None = None, memory: bool | None = None) -> None:
        with self._lock:
            if command is not None:
                self.by_command = command
            if memory is not None:
                self.by_memory = memory
            self._apply()

    @property
    def paused(self) -> bool:
        return self.event.is_set()


class AgentCommands:
    """The agent's own command handlers, over the parts of the agent they act on."""

    def __init__(self, *, stats: PipelineStats, health_payload: Callable[[], dict], pause: PauseSwitch,
                 reporter: Reporter, model: ModelSlot, config: ConfigHolder):
        self.stats, self.health_payload, self.pause = stats, health_payload, pause
        self.reporter, self.model, self.config = reporter, model, config

    def register(self, registry: CommandRegistry) -> None:
        registry.register("ping", self.ping)
        registry.register("status", lambda cmd: self.health_payload())
        registry.register("pause", self.pause_frames)
        registry.register("resume", self.resume_frames)
        registry.register("snapshot", self.snapshot)
        registry.register("set-threshold", self.set_threshold)
        registry.register("reload-config", self.reload_config)

    def ping(self, cmd: Command) -> dict:
        return {"pong": True, "uptime_s": self.stats.snapshot()["uptime_s"]}

    def pause_frames(self, cmd: Command) -> dict:
        self.pause.set(command=True)
        return {"paused": True}

    def resume_frames(self, cmd: Command) -> dict:
        self.pause.set(command=False)
        if self.pause.by_memory:
            raise CommandError("paused because memory is above health.memory_limit; it resumes by itself")
        return {"paused": False}

    def snapshot(self, cmd: Command) -> dict:
        self.reporter.request_snapshot()
        return {"snapshot": "requested: published with the next processed frame"}

    def set_threshold(self, cmd: Command) -> dict:
        key = "value" if "value" in cmd.args else "threshold"
        value = require_number(cmd, key, 0.0, 1.0)
        seg = self.model.get()
        old, seg.threshold = seg.threshold, value
        log.info("threshold changed by command: %.3f -> %.3f", old, value)
        return {"threshold": value, "previous": old}

    def reload_config(self, cmd: Command) -> dict:
        """Apply what can change while running (measurement, reporting, threshold, health); name the rest.

        The crack tracker is kept unless the measurement settings changed, so cracks in view
        keep their track ids instead of being reported again as new.
        """
        from edge_agent.agent.setup import prepare_camera_config
        from edge_agent.config.loader import ConfigError, load_config

        holder = self.config
        if holder.path is None:
            raise CommandError("the agent was started without --config: nothing to reload")
        try:
            new = prepare_camera_config(load_config(holder.path, holder.overrides))
        except ConfigError as exc:
            raise CommandError(f"config not reloaded, the running one stays: {exc}") from None
        old = holder.current
        applied = [section for section in ("measurement", "reporting", "health")
                   if getattr(new, section) != getattr(old, section)]
        self.reporter.configure(new.measurement, new.reporting)
        if new.model.threshold != old.model.threshold:
            seg = self.model.get()
            seg.threshold = new.model.threshold or seg.contract.threshold
            applied.append("model.threshold")
        restart = [section for section in ("camera", "mqtt", "position", "http", "state_dir", "device_id")
                   if getattr(new, section) != getattr(old, section)]
        if new.model.model_copy(update={"threshold": None}) != old.model.model_copy(update={"threshold": None}):
            restart.append("model")
        holder.current = old.model_copy(update={
            "measurement": new.measurement, "reporting": new.reporting, "health": new.health,
            "model": old.model.model_copy(update={"threshold": new.model.threshold})})
        return {"applied": applied, "restart_required": restart}
