"""Settings, as pydantic models that refuse unknown keys (a typo must not silently use a default).

Two kinds:

- ``AnalysisConfig`` shapes the inventory (merge tolerances, segment length, survey width). It is
  stored in the database (``office_meta``) when the database is created, and every process that
  refreshes the inventory reads it from there, so two ingest workers and a ``stats`` call can
  never merge with different tolerances. ``crackseg-office rebuild --config FILE`` changes it
  and recomputes everything with the new values.
- ``IngestConfig`` is per ingest process (broker, group, batching); nothing else depends on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from office.errors import UserError


class InventoryConfig(BaseModel):
    """How observations of one physical crack are recognised across frames, passes and vehicles."""

    model_config = ConfigDict(extra="forbid")

    tolerance_m: float = Field(default=1.0, gt=0, le=10, description=(
        "two crack lines belong to one crack when enough of the shorter lies within this distance of the longer"))
    min_overlap: float = Field(default=0.5, gt=0, le=1, description=(
        "share of the shorter line's length that must lie within tolerance_m of the longer"))
    max_angle_deg: float = Field(default=30.0, gt=0, le=90, description=(
        "largest difference of the two principal directions (lines of at least min_angle_length_m)"))
    min_angle_length_m: float = Field(default=0.5, ge=0, description="shorter lines have no reliable direction")
    centreline_bin_m: float = Field(default=0.2, gt=0, le=2, description=(
        "the merged crack line is the median lateral offset per bin of this length along its principal axis"))


class SegmentConfig(BaseModel):
    """Fixed-length road segments along the driven track, reused by later passes."""

    model_config = ConfigDict(extra="forbid")

    length_m: float = Field(default=10.0, gt=0, le=1000, description="segment length along the track")
    match_m: float = Field(default=2.5, gt=0, description=(
        "a vehicle position within this distance of a segment (driving its way) lies on it"))
    max_heading_diff_deg: float = Field(default=45.0, gt=0, le=90, description=(
        "positions driving more than this off a segment's direction are another lane/direction"))
    max_gap_m: float = Field(default=50.0, gt=0, description=(
        "consecutive positions of one vehicle further apart than this start a new stretch"))
    max_gap_s: float = Field(default=10.0, gt=0, description="... or further apart in time than this")
    crack_match_m: float = Field(default=3.0, gt=0, description=(
        "a crack belongs to the nearest segment whose line is within this distance of the crack's midpoint"))
    survey_width_m: float | None = Field(default=None, gt=0, description=(
        "surveyed width across the road for densities; null = the camera footprint width from the messages"))
    default_width_m: float = Field(default=3.5, gt=0, description=(
        "width used when survey_width_m is null and no message told the footprint (schema v1)"))


class AnalysisConfig(BaseModel):
    """Everything that shapes the inventory; stored in the database, shared by every process."""

    model_config = ConfigDict(extra="forbid")

    inventory: InventoryConfig = Field(default_factory=lambda: InventoryConfig())
    segments: SegmentConfig = Field(default_factory=lambda: SegmentConfig())


class IngestConfig(BaseModel):
    """One ingest worker: where to read, how to batch, what to refuse."""

    model_config = ConfigDict(extra="forbid")

    mqtt_url: str
    db_url: str
    group: str = Field(default="office", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="shared-subscription group")
    prefix: str = Field(default="crackseg", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    client_id: str | None = Field(default=None, min_length=1, max_length=128, description=(
        "stable per worker: the broker keeps this worker's session (and its share of queued messages) under it"))
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60, le=0xFFFFFFFF, description=(
        "how long the broker keeps queueing for a worker that is gone"))
    receive_maximum: int = Field(default=2000, ge=10, le=65535, description=(
        "unacknowledged QoS 1 messages the broker may send at once; must exceed batch_max for batching"))
    batch_max: int = Field(default=500, ge=1, le=20000)
    batch_wait_s: float = Field(default=0.05, ge=0, le=5)
    max_payload_bytes: int = Field(default=1 << 20, ge=1024, description="larger messages go to quarantine")
    quarantine_keep_bytes: int = Field(default=64 << 10, ge=0, description="payload bytes kept per quarantined message")
    refresh_interval_s: float = Field(default=5.0, ge=0, description=(
        "how often this worker brings the inventory up to date (0 = never; stats/export still do)"))


def load_analysis_config(path: str | Path | None) -> AnalysisConfig:
    """A YAML file (sections ``inventory:`` and ``segments:``), or the defaults for None."""
    if path is None:
        return AnalysisConfig()
    p = Path(path)
    try:
        data: Any = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {p} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"config file {p} cannot be read: {exc}".replace("\n", " ")) from None
    try:
        return AnalysisConfig.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise UserError(f"config file {p}: {where}: {first['msg']}") from None
