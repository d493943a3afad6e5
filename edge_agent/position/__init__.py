"""Vehicle position: gpsd, an NMEA receiver on a serial port, a recorded NMEA log, or a fixed position.

``create_position_provider(config)`` builds the provider a device config asks for; every
provider answers ``fix_for_frame(frame)`` with the ``PositionFix`` at the frame's capture time
(interpolated between fixes, or read off the recorded log at the frame's media time) and
``latest()`` with the newest fix, its age computed at read time.
"""

from __future__ import annotations

from edge_agent.config.position import (
    FixedPositionConfig,
    GpsdPositionConfig,
    NmeaFilePositionConfig,
    NmeaPositionConfig,
    NoPositionConfig,
    PositionConfig,
)
from edge_agent.position.base import (
    FrameTimes,
    NoPositionProvider,
    PositionError,
    PositionFix,
    PositionProvider,
    PositionUnavailableError,
    no_fix,
)
from edge_agent.position.fixed import FixedPositionProvider
from edge_agent.position.gpsd import GpsdProvider
from edge_agent.position.nmea import NmeaParser, NmeaSerialProvider
from edge_agent.position.replay import NmeaFileProvider, NmeaLog, write_nmea_log

__all__ = ["FixedPositionProvider", "FrameTimes", "GpsdProvider", "NmeaFileProvider", "NmeaLog", "NmeaParser",
           "NmeaSerialProvider", "NoPositionProvider", "PositionError", "PositionFix", "PositionProvider",
           "PositionUnavailableError", "create_position_provider", "no_fix", "write_nmea_log"]


def create_position_provider(config: PositionConfig | None = None) -> PositionProvider:
    """The provider for ``config.provider`` (not started: call ``start()`` or use ``with``)."""
    config = config or PositionConfig()
    p = config.provider
    if isinstance(p, GpsdPositionConfig):
        return GpsdProvider.from_config(p, config.max_fix_age_s)
    if isinstance(p, NmeaPositionConfig):
        return NmeaSerialProvider.from_config(p, config.max_fix_age_s)
    if isinstance(p, NmeaFilePositionConfig):
        return NmeaFileProvider.from_config(p, config.max_fix_age_s)
    if isinstance(p, FixedPositionConfig):
        return FixedPositionProvider.from_config(p)
    if isinstance(p, NoPositionConfig):
        return NoPositionProvider()
    raise PositionError(f"unknown position provider type {getattr(p, 'type', p)!r}")
