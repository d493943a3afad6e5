"""Vehicle position: gpsd, an NMEA receiver on a serial port, or a fixed position.

``create_position_provider(config)`` builds the provider a device config asks for; every
provider answers ``latest()`` with a ``PositionFix`` whose age is computed at read time.
"""

from __future__ import annotations

from edge_agent.config.position import (
    FixedPositionConfig,
    GpsdPositionConfig,
    NmeaPositionConfig,
    NoPositionConfig,
    PositionConfig,
)
from edge_agent.position.base import (
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

__all__ = ["FixedPositionProvider", "GpsdProvider", "NmeaParser", "NmeaSerialProvider", "NoPositionProvider",
           "PositionError", "PositionFix", "PositionProvider", "PositionUnavailableError", "create_position_provider",
           "no_fix"]


def create_position_provider(config: PositionConfig | None = None) -> PositionProvider:
    """The provider for ``config.provider`` (not started: call ``start()`` or use ``with``)."""
    config = config or PositionConfig()
    p = config.provider
    if isinstance(p, GpsdPositionConfig):
        return GpsdProvider.from_config(p, config.max_fix_age_s)
    if isinstance(p, NmeaPositionConfig):
        return NmeaSerialProvider.from_config(p, config.max_fix_age_s)
    if isinstance(p, FixedPositionConfig):
        return FixedPositionProvider.from_config(p)
    if isinstance(p, NoPositionConfig):
        return NoPositionProvider()
    raise PositionError(f"unknown position provider type {getattr(p, 'type', p)!r}")
