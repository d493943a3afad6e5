"""The bundle manifest: what a model bundle holds, how it was made and how to check it.

Why a manifest: a device must be able to decide, without torch and without trusting the
transport, that the files it is about to run are exactly the ones that were converted and
validated. Every file the device uses is listed with its size and sha256, so signing the
manifest bytes (``manifest.sig``) covers the whole bundle.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.contract import InferenceContract

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
CHECKSUM_NAME = "manifest.sha256"

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_relative_file(value: str) -> str:
    """A bundle file name: relative, POSIX, inside the bundle (no '..', no absolute path)."""
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value or value != str(p):
        raise ValueError(f"file '{value}' must be a plain relative path inside the bundle")
    return value


class FileEntry(BaseModel):
    """Any file of the bundle with the figures that prove it is intact."""

    model_config = ConfigDict(extra="forbid")

    file: str
    size_bytes: int = Field(ge=0)
    sha256: str

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        return _check_relative_file(v)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not _SHA256.match(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class ArtifactEntry(FileEntry):
    """One runnable model file (one format, precision and input size)."""

    format: Literal["onnx", "tflite"]
    precision: Literal["fp32", "int8"]
    input_size: tuple[int, int]
    layout: Literal["NCHW", "NHWC"]
    input_dtype: Literal["float32", "uint8"] | None = None  # None: the bundle contract's

    @field_validator("file")
    @classmethod
    def _suffix(cls, v: str) -> str:
        if not (v.endswith(".onnx") or v.endswith(".tflite")):
            raise ValueError(f"artifact '{v}' must end in .onnx or .tflite")
        return v


class SourceInfo(BaseModel):
    """Where the model came from (so a figure in the field can be traced to a checkpoint)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    checkpoint_sha256: str
    kind: str
    architecture: str | None = None
    params: int | None = None
    macs: int | None = None
    pruning: dict | None = None


class ValidationEntry(BaseModel):
    """Scores and cost of one model variant on the validation data."""

    model_config = ConfigDict(extra="forbid")

    precision: str
    backend: str
    file: str | None = None
    f1: float
    iou: float
    precision_px: float
    recall_px: float
    median_ms: float | None = None
    size_bytes: int | None = None


class ValidationSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str
    split: str
    images: int
    threshold: float
    tolerance_px: float = 2.0
    threads: int | None = None
    latency_input: tuple[int, int] | None = None
    results: dict[str, ValidationEntry]
    f1_drop_vs_fp32: dict[str, float] = Field(default_factory=dict)
    max_f1_drop: float
    passed: bool


class SelftestTolerance(BaseModel):
    """How far one artifact's probabilities may differ from the expected ones."""

    model_config = ConfigDict(extra="forbid")

    max_abs: float = Field(ge=0.0, le=1.0)
    mean_abs: float = Field(ge=0.0, le=1.0)
    measured_max_abs: float = Field(ge=0.0, le=1.0)
    measured_mean_abs: float = Field(ge=0.0, le=1.0)


class Selftest(BaseModel):
    """A reference input and the torch fp32 probabilities it must produce (within tolerance).

    A device checks a freshly received model against it before switching to it.
    """

    model_config = ConfigDict(extra="forbid")

    image: FileEntry
    expected: FileEntry
    reference: str = "torch-fp32"
    tolerances: dict[str, SelftestTolerance]

    @field_validator("tolerances")
    @classmethod
    def _keys(cls, v: dict[str, SelftestTolerance]) -> dict[str, SelftestTolerance]:
        for k in v:
            _check_relative_file(k)
        return v


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1  # SCHEMA_VERSION
    name: str
    version: str
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    source: SourceInfo
    contract: InferenceContract
    artifacts: list[ArtifactEntry] = Field(min_length=1)
    validation: ValidationSummary | None = None
    selftest: Selftest | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"name '{v}' must be 1-64 characters of letters, digits, '.', '_' or '-'")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _SEMVER.match(v):
            raise ValueError(f"version '{v}' is not a semantic version like 1.2.0")
        return v

    @field_validator("created")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("created must carry a time zone (UTC)")
        return v.astimezone(timezone.utc)

    @field_validator("artifacts")
    @classmethod
    def _unique(cls, v: list[ArtifactEntry]) -> list[ArtifactEntry]:
        files = [a.file for a in v]
        if len(set(files)) != len(files):
            raise ValueError("artifact files must be unique")
        return v

    def files(self) -> list[FileEntry]:
        """Every file the manifest vouches for."""
        out: list[FileEntry] = list(self.artifacts)
        if self.selftest:
            out += [self.selftest.image, self.selftest.expected]
        return out

    def to_bytes(self) -> bytes:
        """The canonical bytes written to manifest.json (and signed)."""
        return (self.model_dump_json(indent=2) + "\n").encode("utf-8")


def version_key(version: str) -> tuple:
    """Sort key for semantic versions (pre-releases before the release)."""
    m = _SEMVER.match(version)
    if not m:
        raise ValueError(f"version '{version}' is not a semantic version")
    pre = version.split("+")[0].partition("-")[2]
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), pre == "", pre
