"""Position settings (the ``position:`` section of a device config).

Where the vehicle's position comes from is one discriminated union on ``provider.type``, so
each kind of receiver accepts exactly its own keys (a gpsd host under an NMEA provider is an
error, not a silently ignored line)::

    position:
      provider: {type: gpsd, host: 127.0.0.1, port: 2947}
      max_fix_age_s: 5

``type: none`` (the default) reports every crack without a position. ``type: nmea-file``
replays a recorded NMEA log in step with a recorded video (edge_agent/position/replay.py).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from edge_agent.config.base import MAX_TIMEOUT_S, ConfigSection, path_exists


class _Reconnecting(ConfigSection):
    """Backoff shared by the receivers that can disappear (gpsd restarts, USB GPS unplugged)."""

    reconnect_initial_s: float = Field(0.5, gt=0, le=MAX_TIMEOUT_S, description="first wait after a lost connection")
    reconnect_max_s: float = Field(30.0, gt=0, le=MAX_TIMEOUT_S, description="the wait doubles up to this")


class GpsdPositionConfig(_Reconnecting):
    """A gpsd daemon (JSON protocol over TCP): the usual choice, gpsd handles every receiver model."""

    type: Literal["gpsd"]
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(2947, ge=1, le=65535)
    connect_timeout_s: float = Field(5.0, gt=0, le=MAX_TIMEOUT_S)


class NmeaPositionConfig(_Reconnecting):
    """An NMEA 0183 receiver on a serial port, read directly (no gpsd installed)."""

    type: Literal["nmea"]
    device: str = Field(min_length=1, description="serial device, e.g. /dev/ttyACM0, /dev/ttyUSB0, /dev/serial0")
    baudrate: int = Field(9600, gt=0, le=4_000_000, description="4800 for old receivers, 9600 most, up to 115200")
    require_checksum: bool = Field(True, description="drop sentences without a '*hh' checksum")


class NmeaFilePositionConfig(ConfigSection):
    """A recorded NMEA 0183 log, replayed in step with a recorded video's frame times.

    The video's first frame is at ``video_start_utc`` (or, when null, at the log's first valid
    fix) plus ``offset_s``; every later frame at that plus its time in the video file.
    """

    type: Literal["nmea-file"]
    path: Path = Field(description="the NMEA log recorded with the video (GGA/RMC/VTG sentences)")
    offset_s: float = Field(0.0, ge=-MAX_TIMEOUT_S, le=MAX_TIMEOUT_S, description=(
        "seconds added to the alignment: positive when the video started after the log's first fix "
        "(or after video_start_utc)"))
    video_start_utc: datetime | None = Field(None, description=(
        "UTC time of the video's first frame, e.g. 2024-05-01T09:00:00.000Z; null = the log's first fix"))
    require_checksum: bool = Field(True, description="drop sentences without a '*hh' checksum")

    @field_validator("path")
    @classmethod
    def _log_exists(cls, v: Path) -> Path:
        if not path_exists(v, file=True):
            raise ValueError(f"NMEA log not found: {v}")
        return v

    @field_validator("video_start_utc")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("video_start_utc needs a time zone: end it with Z (UTC) or +hh:mm")
        return v


class FixedPositionConfig(ConfigSection):
    """A fixed position: a test rig, a parked vehicle, or a camera on a pole."""

    type: Literal["fixed"]
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    alt_m: float | None = Field(None, ge=-1000, le=100_000, description="metres above sea level")
    heading_deg: float | None = Field(None, ge=0, lt=360, description=(
        "direction of travel, degrees clockwise from true north: needed to place cracks on the map"))
    speed_mps: float | None = Field(None, ge=0, le=200, description="constant speed reported (tracking on a test rig)")


class NoPositionConfig(ConfigSection):
    """No position: cracks are reported without coordinates."""

    type: Literal["none"] = "none"


PositionProviderConfig = Annotated[
    GpsdPositionConfig | NmeaPositionConfig | NmeaFilePositionConfig | FixedPositionConfig | NoPositionConfig,
    Field(discriminator="type"),
]


class PositionConfig(ConfigSection):
    """Which receiver gives the vehicle position, and how old a fix may be before it is not used."""

    provider: PositionProviderConfig = Field(default_factory=NoPositionConfig)
    max_fix_age_s: float = Field(5.0, gt=0, le=MAX_TIMEOUT_S, description=(
        "an older fix is reported as no fix: at 20 m/s a 5 s old position is already 100 m off"))
