"""The systemd watchdog fed by processed frames, not by a clock.

A timer that pings unconditionally would keep a wedged agent alive forever (camera read
hung, inference deadlocked, the loop stuck on a full queue). Here the pipeline calls
``heartbeat()`` after every processed frame and the timer thread sends ``WATCHDOG=1`` every
half ``WatchdogSec`` only if a frame was processed since the previous ping. When frames
stop, pings stop, and systemd kills and restarts the service after ``WatchdogSec``.
"""

from __future__ import annotations

import logging
import threading
import time

from edge_agent.service.notify import Notifier

log = logging.getLogger(__name__)


class FrameWatchdog:
    """Pings the service manager while (and only while) frames are being processed."""

    def __init__(self, notifier: Notifier | None = None, interval_s: float | None = None):
        """``interval_s`` defaults to half of the unit's ``WatchdogSec`` (from WATCHDOG_USEC)."""
        self.notifier = notifier or Notifier()
        if interval_s is None:
            timeout = self.notifier.watchdog_timeout_s()
            interval_s = timeout / 2 if timeout else None
        if interval_s is not None and interval_s <= 0:
            raise ValueError(f"watchdog interval must be > 0 s, got {interval_s}")
        self.interval_s = interval_s
        self.pings = 0
        self._last_beat: float | None = None
        self._since = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """True when a watchdog applies (systemd asked for one, or an interval was given)."""
        return self.interval_s is not None and self.notifier.enabled

    def heartbeat(self) -> None:
        """Call after every processed frame; cheap (one attribute store), safe from any thread."""
        self._last_beat = time.monotonic()

    def heartbeat_age_s(self) -> float | None:
        """Seconds since the last processed frame, None before the first (fed to ``/health``)."""
        beat = self._last_beat
        return None if beat is None else time.monotonic() - beat

    def start(self) -> bool:
        """Start the ping thread; False (and nothing started) when no watchdog applies."""
        if not self.active or self._thread is not None:
            return self._thread is not None
        self._stop.clear()
        self._since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        log.info("systemd watchdog: pinging every %.1f s while frames are processed", self.interval_s)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, (self.interval_s or 0) * 2))
            self._thread = None

    def _run(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s):
            self.check_and_ping()

    def check_and_ping(self) -> bool:
        """One tick: ping if a frame was processed since the previous tick; True if pinged."""
        now = time.monotonic()
        beat = self._last_beat
        fresh = beat is not None and beat > self._since
        self._since = now
        if not fresh:
            log.debug("systemd watchdog: no frame processed in the last %.1f s, not pinging", self.interval_s or 0)
            return False
        if self.notifier.watchdog():
            self.pings += 1
        return True
