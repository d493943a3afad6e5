"""Running as a service: systemd notify/watchdog and the local HTTP health endpoints.

The HTTP module (and prometheus-client behind it) is imported only when asked for, so an
agent with ``http.enabled: false`` does not carry it in memory.
"""

from edge_agent.service.notify import Notifier
from edge_agent.service.watchdog import FrameWatchdog

__all__ = ["FrameWatchdog", "HealthServer", "HealthServerError", "HealthSnapshot", "Notifier"]


def __getattr__(name: str):
    if name in ("HealthServer", "HealthServerError", "HealthSnapshot"):
        from edge_agent.service import http

        return getattr(http, name)
    raise AttributeError(f"module 'edge_agent.service' has no attribute {name!r}")
