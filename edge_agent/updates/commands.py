"""The ``model-*`` commands: from an MQTT command to a manager call, and from an error to an answer.

Why an adapter apart from the manager: the manager is also driven by the CLI, by start-up
recovery and by its own watch; only commands need argument models, the meta fields every
command may carry, and the translation of every refusal into a ``CommandError`` (the answer
``ok: false`` with that message). Nothing here changes state itself.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.comms.base import Command, CommandError
from edge_agent.updates.chunks import TransferError
from edge_agent.updates.download import check_sha256, check_url_text
from edge_agent.updates.state import Job, Stage
from edge_agent.updates.store import UpdateError

if TYPE_CHECKING:
    from edge_agent.updates.manager import UpdateManager

# Fields a command may carry besides its own arguments (request ids, signature, envelope).
COMMAND_META_KEYS = frozenset({"request_id", "id", "msg_id", "sig", "key_id", "ts", "nonce", "schema_version",
                               "seq", "device_id", "sent_ts"})


class UpdateRequest(BaseModel):
    """The ``model-update`` command: where the archive is and what it must be."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    sha256: str
    size: int | None = Field(None, ge=1)
    version: str | None = Field(None, min_length=1)


class ChunkRequest(BaseModel):
    """One ``model-chunk`` command; ``sha256`` is that of the whole archive."""

    model_config = ConfigDict(extra="forbid")

    transfer_id: str
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    sha256: str
    data: str
    version: str | None = Field(None, min_length=1)


class ChunkAbortRequest(BaseModel):
    """``model-chunk-abort``: end an unfinished transfer and free its disk space."""

    model_config = ConfigDict(extra="forbid")

    transfer_id: str


def parse_args(model: type[BaseModel], cmd: Command) -> Any:
    """Validate a command's JSON object (meta fields removed) into ``model``, or a CommandError."""
    args = {k: v for k, v in cmd.args.items() if k not in COMMAND_META_KEYS}
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise CommandError(f"{cmd.name}: '{where}': {err['msg']}") from None


def command_origin(cmd: Command) -> str:
    """Who sent it, as far as the device has proven: ``key:<id>`` after a verified signature, else the
    topic. Never the payload's ``key_id``: an unsigned command can claim any key."""
    return cmd.origin


def new_update_id() -> str:
    return uuid.uuid4().hex[:12]


class UpdateCommands:
    """``model-update``, ``model-chunk``, ``model-chunk-abort``, ``model-rollback`` and ``model-status``."""

    def __init__(self, manager: UpdateManager):
        self.manager = manager
        # Checked again here, after the registry's verifier: if an agent were wired without one,
        # model changes fail closed instead of running unsigned.
        self.require_signature = bool(manager.ucfg.signed_update_commands_required)

    def _authorised(self, cmd: Command) -> None:
        if self.require_signature and not cmd.verified_key_id:
            raise CommandError(f"command refused: {cmd.name} must be signed on this device, and no verified "
                               "signature came with it (updates.require_signed_update_commands)")

    def register(self, registry: Any) -> None:
        registry.register("model-update", self.update)
        registry.register("model-chunk", self.chunk)
        registry.register("model-chunk-abort", self.abort_transfer)
        registry.register("model-rollback", self.rollback)
        registry.register("model-status", self.status)

    def update(self, cmd: Command) -> dict:
        self._authorised(cmd)
        req = parse_args(UpdateRequest, cmd)
        try:
            sha = check_sha256(req.sha256)
            job = Job(update_id=new_update_id(), origin=command_origin(cmd), sha256=sha, url=check_url_text(req.url),
                      size=req.size, version=req.version)
            return self.manager.start(job)
        except UpdateError as exc:
            raise CommandError(str(exc)) from None

    def chunk(self, cmd: Command) -> dict:
        self._authorised(cmd)
        req = parse_args(ChunkRequest, cmd)
        try:
            data = base64.b64decode(req.data, validate=True)
        except (binascii.Error, ValueError):
            raise CommandError("model-chunk: 'data' is not base64") from None
        try:
            progress = self.manager.chunks.add(req.transfer_id, req.index, req.count, req.sha256, data)
        except (TransferError, UpdateError) as exc:
            raise CommandError(str(exc)) from None
        result = progress.to_dict()
        if progress.complete is None:
            return result
        job = Job(update_id=new_update_id(), origin=command_origin(cmd), sha256=req.sha256.lower(),
                  path=progress.complete, version=req.version)
        try:
            result["update"] = self.manager.start(job)
        except UpdateError as exc:
            raise CommandError(f"all {progress.count} chunks received and the archive verified, but {exc}; "
                               "resend any chunk of this transfer later to start the update") from None
        return result

    def abort_transfer(self, cmd: Command) -> dict:
        self._authorised(cmd)
        req = parse_args(ChunkAbortRequest, cmd)
        try:
            aborted = self.manager.chunks.abort(req.transfer_id)
        except UpdateError as exc:
            raise CommandError(str(exc)) from None
        return {"aborted": aborted.to_dict(), "open": [t.to_dict() for t in self.manager.chunks.open_transfers()]}

    def rollback(self, cmd: Command) -> dict:
        self._authorised(cmd)
        try:
            return self.manager.rollback("requested by command", origin=command_origin(cmd), automatic=False)
        except UpdateError as exc:
            raise CommandError(str(exc)) from None

    def status(self, cmd: Command) -> dict:
        return self.manager.status(include_installed=True)


def register_commands(manager: UpdateManager, registry: Any) -> UpdateCommands:
    """Register the ``model-*`` commands of ``manager`` on a ``CommandRegistry``."""
    commands = UpdateCommands(manager)
    commands.register(registry)
    return commands


DISABLED_NOTE = "over-the-air updates are off on this device (updates.enabled: false)"


def register_disabled_commands(registry: Any, running_model: Callable[[], Mapping[str, Any]] | None = None) -> None:
    """The ``model-*`` commands of an agent whose updates are off.

    Why register anything: the office asks every vehicle ``model-status`` to see what it
    runs; "unknown command" reads like a broken or outdated agent. So ``model-status``
    answers with stage ``disabled`` and the running model, and the commands that would change
    the model say why they cannot.
    """

    def status(cmd: Command) -> dict:
        running = None
        if running_model is not None:
            try:
                running = dict(running_model())
            except Exception as exc:  # a status answer must not fail because the model info did
                running = {"error": f"{type(exc).__name__}: {exc}"}
        return {"stage": Stage.DISABLED.value, "enabled": False, "running": running, "note": DISABLED_NOTE}

    def refuse(cmd: Command) -> dict:
        raise CommandError(f"{cmd.name} refused: {DISABLED_NOTE}; enable updates in the device config "
                           "(docs/updates.md) or install a model by hand: crackseg-edge model install BUNDLE")

    from edge_agent.updates.signed_commands import UPDATE_COMMANDS

    registry.register("model-status", status)
    for name in sorted(UPDATE_COMMANDS):
        registry.register(name, refuse)
