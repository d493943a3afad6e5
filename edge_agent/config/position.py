"""Position settings (the ``position:`` section of a device config).

Where the vehicle's position comes from is one discriminated union on ``provider.type``, so
each kind of receiver accepts exactly its own keys (a gpsd host under an NMEA provider is an
error, not a silently ignored line)::

    position:
      provider: {type: gpsd, host: 127.0.0.1, port: 2947}
      max_fix_age_s: 5

``type: none`` (the default) reports every crack without a position.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edge_agent.config.base import MAX_TIMEOUT_S, ConfigSection


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


class FixedPositionConfig(ConfigSection):
    """A fixed position: a test rig, a parked vehicle, or a camera on a pole."""

    type: Literal["fixed"]
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    alt_m: float | None = Field(None, ge=-1000, le=100_000, description="metres above sea level")
    heading_deg: float | None = Field(None, ge=0, lt=360)
    speed_mps: float | None = Field(None, ge=0, le=200, description="constant speed reported (tracking on a test rig)")


class NoPositionConfig(ConfigSection):
    """No position: cracks are reported without coordinates."""

    type: Literal["none"] = "none"


PositionProviderConfig = Annotated[
    GpsdPositionConfig | NmeaPositionConfig | FixedPositionConfig | NoPositionConfig,
    Field(discriminator="type"),
]


class PositionConfig(ConfigSection):
    """Which receiver gives the vehicle position, and how old a fix may be before it is not used."""

    provider: PositionProviderConfig = Field(default_factory=NoPositionConfig)
    max_fix_age_s: float = Field(5.0, gt=0, le=MAX_TIMEOUT_S, description=(
        "an older fix is reported as no fix: at 20 m/s a 5 s old position is already 100 m off"))
