"""Config sections owned by the service layer: model, health, http, logging, and shared types.

Every section refuses unknown keys (``extra="forbid"``) so a typo in a field vehicle's YAML
is an error at ``check-config`` time with its line number, instead of a silently ignored
setting discovered after a day of survey driving.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from edge_agent.config.base import MAX_TIMEOUT_S, ConfigSection, path_exists
from edge_agent.detectors.backends.providers import PROVIDER_NAMES

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_byte_size(value: object) -> object:
    """``512M`` -> 536870912. Suffixes K/M/G/T are powers of 1024, as in systemd's MemoryMax=.

    pydantic's ByteSize reads ``512M`` as 512*10**6, which would disagree with the unit
    file's own ``MemoryMax=`` by 5 %; operators copy values between the two.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        number: float = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"'{value[:40]}' is not a size: write e.g. 512M, 1.5G or a number of bytes")
        number = float(m.group(1)) * _SIZE_FACTORS[m.group(2).lower()]
    else:
        return value
    if isinstance(number, float) and not math.isfinite(number):  # int(inf) raises OverflowError, not a config error
        raise ValueError(f"'{str(value)[:40]}' is not a finite size: write e.g. 512M, 1.5G or a number of bytes")
    return int(number)


MAX_BYTES = 1024**4  # 1 TiB: more than any disk or memory budget on a vehicle computer
ByteCount = Annotated[int, BeforeValidator(parse_byte_size), Field(gt=0, le=MAX_BYTES)]


def expand_path(value: object) -> object:
    """``~`` expands to the home of the user running the agent (documented in the configs)."""
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    if isinstance(value, Path) and str(value).startswith("~"):
        return value.expanduser()
    return value


ConfigPath = Annotated[Path, BeforeValidator(expand_path)]


def _provider_name(p: str) -> str:
    """Short names are kept lower-case; full onnxruntime names pass through (checked at load)."""
    if p.lower() in PROVIDER_NAMES:
        return p.lower()
    if p.endswith("ExecutionProvider"):
        return p
    raise ValueError(f"unknown execution provider '{p}': use cpu, cuda, tensorrt or a full onnxruntime name such "
                     "as CPUExecutionProvider")


ProviderName = Annotated[str, AfterValidator(_provider_name)]


class ModelConfig(ConfigSection):
    """Which crack model runs and how.

    ``path: null`` means the reference bundle shipped inside the package, so a fresh install
    works before any model is deployed. Relative paths in the YAML are relative to the
    config file's folder.
    """

    path: ConfigPath | None = Field(None, description="model .onnx/.tflite, bundle folder or archive; null = "
                                                      "the shipped reference bundle")
    expected_version: str | None = Field(None, min_length=1, description="refuse to start when the loaded model "
                                                                          "reports another version (MODEL_VERSION)")
    backend: Literal["onnx", "tflite", "auto"] = Field("auto", description=(
        "inference runtime; auto = whichever runs each artifact faster on this machine (measured once, "
        "remembered in the state folder)"))
    precision: Literal["int8", "fp32"] | None = Field(None, description="artifact to pick inside a bundle; null = "
                                                                       "the bundle's default")
    threads: int | None = Field(None, ge=1, le=64, description=(
        "inference threads per worker; null = the usable cores shared by the workers"))
    workers: int = Field(1, ge=1, le=8, description=(
        "inference workers, each segmenting whole frames in parallel (results stay in frame order); 2 workers "
        "x 1 thread can beat 1 x 2 where one frame's work does not fill the cores"))
    providers: list[ProviderName] = Field(default_factory=lambda: ["cpu"], min_length=1,
                                 description="onnxruntime execution providers in order of preference")
    batch_size: int = Field(1, description="frames per inference call; must be 1 (see _batch_of_one)")
    threshold: float | None = Field(None, gt=0.0, lt=1.0, description="decision threshold; null = the model's")
    public_key_file: ConfigPath | None = Field(None, description="ed25519 public key that bundles must be signed "
                                                                 "with")
    public_key_credential: str | None = Field(None, min_length=1, description="the same key as a systemd "
                                                                               "credential name")
    require_signature: bool = False

    @field_validator("path")
    @classmethod
    def _model_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not path_exists(v):
            raise ValueError(f"model file not found: {v} (deploy the model there, fix the path, or write "
                             "'path: null' for the shipped reference model)")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_of_one(cls, v: int) -> int:
        """Frames arrive one at a time from a live camera: batching N frames would hold each frame
        back up to N-1 frame periods and multiply activation memory, for no throughput gain on a
        CPU that already uses all its cores on one frame."""
        if v != 1:
            raise ValueError(f"batch_size must be 1 on the edge (got {v}): frames arrive one at a time from a live "
                             "camera, batching only adds latency and memory; use model.threads for speed")
        return v

    @field_validator("public_key_file")
    @classmethod
    def _key_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not path_exists(v, file=True):
            raise ValueError(f"public key file not found: {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.public_key_file and self.public_key_credential:
            raise ValueError("give public_key_file or public_key_credential, not both")
        if self.require_signature and not (self.public_key_file or self.public_key_credential):
            raise ValueError("require_signature needs public_key_file or public_key_credential")
        if self.backend == "tflite" and [p for p in self.providers if p not in ("cpu", "CPUExecutionProvider")]:
            raise ValueError("providers apply to the onnx backend only; with backend tflite leave providers: [cpu]")
        return self

    def onnx_providers(self) -> list[str]:
        """Full onnxruntime provider names, in order, for ``open_model(providers=...)``."""
        return [PROVIDER_NAMES.get(p, p) for p in self.providers]


class HealthConfig(ConfigSection):
    """When the agent counts as alive, how often it reports, and its memory budget.

    "Camera stalled" for ``/ready`` reuses ``camera.stall_timeout_s`` (the age after which the
    source is reopened), so there is one number for one idea.
    """

    interval_s: float = Field(30.0, ge=1.0, le=3600.0, description="health message period over MQTT")
    heartbeat_timeout_s: float = Field(15.0, gt=0.0, le=MAX_TIMEOUT_S, description="/health fails when the "
                                                                                   "processing loop has not "
                                                                                   "completed a frame for this long")
    memory_limit: ByteCount | None = Field(None, description="soft RSS limit (512M, 1G): warn and stop accepting "
                                                             "frames beyond it (MEMORY_LIMIT)")


class HttpConfig(ConfigSection):
    """Local health/metrics endpoints. Loopback by default: nothing on the vehicle LAN sees them."""

    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1, description="bind address; 0.0.0.0 exposes the endpoints to the "
                                                             "network (e.g. for a Prometheus scraper)")
    port: int = Field(8787, ge=0, le=65535, description="0 picks a free port (tests)")


class LoggingConfig(ConfigSection):
    """Log verbosity; the output goes to stderr, which systemd sends to the journal."""

    level: LogLevel = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v


def default_state_dir() -> Path:
    """systemd's ``$STATE_DIRECTORY`` when run as the service, else a per-user folder (not root)."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/crackseg-edge")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "crackseg-edge"


DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def validate_device_id(v: str) -> str:
    """MQTT topic levels must not hold '/', '+', '#' or spaces; keep ids short and plain."""
    if not re.match(DEVICE_ID_PATTERN, v):
        raise ValueError(f"device id '{v}' must be 1-64 letters, digits, '_', '-' or '.', starting with a letter "
                         "or digit (it becomes an MQTT topic level)")
    return v
