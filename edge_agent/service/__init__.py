"""Running as a service: systemd notify/watchdog and the local HTTP health endpoints."""

from edge_agent.service.http import HealthServer, HealthServerError, HealthSnapshot
from edge_agent.service.notify import Notifier
from edge_agent.service.watchdog import FrameWatchdog

__all__ = ["FrameWatchdog", "HealthServer", "HealthServerError", "HealthSnapshot", "Notifier"]
