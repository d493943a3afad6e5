"""Over-the-air model updates and command security (the ``updates:`` section of a device config).

Off by default: a device receives models only once an operator has decided where they come
from (URL schemes, size limits) and, ideally, who may order an update (signed commands).
``file://`` is off too, and confined to ``file_root`` when on: anyone who may publish a
command could otherwise make the device read any of its files::

    updates:
      enabled: true
      allowed_url_schemes: [https]
      require_signed_commands: true
      command_public_keys:
        - {key_id: office-2024, credential: command-signing-key}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge_agent.config.base import Age, ConfigSection, Seconds, path_exists
from edge_agent.config.sections import ByteCount, ConfigPath

KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
UrlScheme = Literal["http", "https", "file"]
_DEFAULT_URL_SCHEMES: list[UrlScheme] = ["https", "http"]  # file:// needs file_root: never on by default


class CommandKeyConfig(ConfigSection):
    """One Ed25519 public key allowed to sign commands, named by the ``key_id`` commands carry.

    Several keys (e.g. the back office and a field laptop, or an old and a new key while
    rotating) can be trusted at once; removing one revokes it.
    """

    key_id: str = Field(description="name the signer puts in the command's key_id field")
    file: ConfigPath | None = Field(None, description="PEM public key file")
    credential: str | None = Field(None, min_length=1, description="the same key as a systemd credential name")

    @field_validator("key_id")
    @classmethod
    def _key_id(cls, v: str) -> str:
        if not re.match(KEY_ID_PATTERN, v):
            raise ValueError(f"key_id '{v}' must be 1-64 letters, digits, '_', '-' or '.'")
        return v

    @field_validator("file")
    @classmethod
    def _file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not path_exists(v, file=True):
            raise ValueError(f"command public key file not found: {v}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> CommandKeyConfig:
        if bool(self.file) == bool(self.credential):
            raise ValueError(f"key '{self.key_id}': give exactly one of file or credential")
        return self


class UpdatesConfig(ConfigSection):
    """How a device accepts, checks, switches to and watches a new model."""

    enabled: bool = Field(False, description="accept model-update / model-chunk commands and manage "
                                             "<state_dir>/models")
    max_bundle_bytes: ByteCount = Field(256 * 1024**2, description="largest bundle archive accepted (download "
                                                                   "or chunked transfer)")
    download_timeout_s: Seconds = Field(600.0, gt=0, description="a download taking longer is abandoned")
    allowed_url_schemes: list[UrlScheme] = Field(
        default_factory=lambda: _DEFAULT_URL_SCHEMES.copy(), min_length=1,
        description="URL schemes model-update may use; the sha256 in the command and the bundle hashes "
                    "protect the content over plain http too. file needs file_root")
    file_root: ConfigPath | None = Field(None, description="the only folder file:// URLs may read (e.g. a USB "
                                                           "stick's mount point); no '..', no symlink out of it")
    watch_window_s: Seconds = Field(300.0, gt=0, description="after a switch, the new model is watched this long "
                                                           "and rolled back if it fails")
    max_consecutive_inference_errors: int = Field(5, ge=1, description="this many failed frames in a row during "
                                                                       "the watch window roll back")
    min_fps_fraction: float = Field(0.5, gt=0.0, le=1.0, description="processed fps below this fraction of the "
                                                                     "fps before the update rolls back")
    fps_settle_s: Seconds = Field(30.0, gt=0, description="frame rate is judged only this long after the switch "
                                                        "(the fps meter averages over 10 s)")
    max_restarts_while_watching: int = Field(2, ge=1, description="the agent restarting this often during the "
                                                                  "watch window (crash, watchdog) rolls back")
    keep_versions: int = Field(2, ge=1, description="installed models kept besides the active one (the previous "
                                                    "one always counts)")
    require_signed_commands: bool = Field(False, description="refuse every command without a valid Ed25519 "
                                                             "signature from command_public_keys")
    require_signed_update_commands: bool = Field(True, description="once command_public_keys is set, the commands "
                                                                   "that change the model (model-update, "
                                                                   "model-chunk, model-chunk-abort, model-rollback) "
                                                                   "need a valid signature even when "
                                                                   "require_signed_commands is false")
    command_public_keys: list[CommandKeyConfig] = Field(default_factory=list)
    command_max_age_s: float = Field(300.0, gt=0, le=7 * 24 * 3600.0,
                                     description="signed commands whose ts is further than this from the "
                                                 "device clock (past or future) are refused")
    chunk_max_bytes: ByteCount = Field(256 * 1024, description="largest decoded payload of one model-chunk "
                                                               "command (keep it under the broker's "
                                                               "message_size_limit)")
    transfer_max_age_s: Age = Field(3600.0, gt=0, description="an incomplete chunked transfer that got no chunk "
                                                                "for this long is deleted")
    max_open_transfers: int = Field(2, ge=1, description="incomplete chunked transfers kept at once; a chunk of "
                                                         "another transfer is refused (model-chunk-abort ends one)")
    transfers_max_bytes: ByteCount | None = Field(None, description="downloads/ may hold at most this much for "
                                                                    "chunked transfers (unfinished chunks and received "
                                                                    "archives); default 2 x max_bundle_bytes")
    audit_max_bytes: ByteCount = Field(8 * 1024**2, description="audit.jsonl is rotated to audit.jsonl.1 beyond "
                                                                "this size")

    @property
    def signed_update_commands_required(self) -> bool:
        """Whether model-changing commands must carry a verified signature on this device."""
        return bool(self.command_public_keys) and (self.require_signed_update_commands
                                                   or self.require_signed_commands)

    @model_validator(mode="after")
    def _consistent(self) -> UpdatesConfig:
        if "file" in self.allowed_url_schemes and self.file_root is None:
            raise ValueError("allowed_url_schemes has file but file_root is not set: name the one folder file:// "
                             "URLs may read (e.g. /media/usb), or remove file")
        if self.require_signed_commands and not self.command_public_keys:
            raise ValueError("require_signed_commands needs at least one entry in command_public_keys")
        ids = [k.key_id for k in self.command_public_keys]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"command_public_keys: key_id {', '.join(dupes)} given more than once")
        if self.fps_settle_s >= self.watch_window_s:
            raise ValueError(f"fps_settle_s ({self.fps_settle_s}) must be shorter than watch_window_s "
                             f"({self.watch_window_s}), or the frame rate is never judged")
        if self.chunk_max_bytes > self.max_bundle_bytes:
            raise ValueError("chunk_max_bytes must not exceed max_bundle_bytes")
        if self.transfers_max_bytes is not None and self.transfers_max_bytes < self.max_bundle_bytes:
            raise ValueError("transfers_max_bytes must be at least max_bundle_bytes, or no bundle could arrive in "
                             "chunks")
        return self
