"""Position from a gpsd daemon over its JSON protocol (TCP, port 2947 by default).

gpsd supports every receiver model and shares one receiver among programs, so it is the
preferred source on a vehicle. The provider sends ``?WATCH={"enable":true,"json":true}`` and
reads newline-terminated JSON reports in a background thread: ``TPV`` (time-position-velocity)
carries the fix, ``SKY`` the satellites in use. When gpsd goes away (restart, not yet started
at boot) the thread reconnects with exponential backoff; the last fix ages out meanwhile.
No gpsd client library is needed: the protocol is plain JSON lines.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import replace
from datetime import datetime, timezone

from edge_agent.config.position import GpsdPositionConfig
from edge_agent.position.base import (
    Backoff,
    FixMode,
    FixQuality,
    PositionFix,
    PositionProvider,
)

log = logging.getLogger(__name__)

WATCH_COMMAND = b'?WATCH={"enable":true,"json":true};\n'
_MODES: dict[int, FixMode] = {0: "none", 1: "none", 2: "2d", 3: "3d"}
# TPV "status" (gpsd >= 3.20): 0/1 plain, 2 DGPS, 3 RTK fixed, 4 RTK float, 5 dead reckoning,
# 6 GNSS + dead reckoning, 7 time only (surveyed), 8 simulated.
_STATUS: dict[int, FixQuality] = {0: "gps", 1: "gps", 2: "dgps", 3: "rtk_fixed", 4: "rtk_float", 5: "estimated",
                                  6: "gps", 7: "none", 8: "simulated"}


def parse_time(value: object) -> datetime | None:
    """gpsd's ISO 8601 UTC time (``2024-05-01T10:00:00.000Z``), None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _num(report: dict, *keys: str) -> float | None:
    for key in keys:
        value = report.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def tpv_to_fix(tpv: dict, satellites: int | None = None) -> PositionFix | None:
    """A fix from a TPV report; None when gpsd reports no fix (mode 0/1 or no coordinates)."""
    mode = _MODES.get(int(tpv.get("mode", 0) or 0), "none")
    lat, lon = _num(tpv, "lat"), _num(tpv, "lon")
    if mode == "none" or lat is None or lon is None:
        return None
    quality = _STATUS.get(int(tpv.get("status", 1) or 1), "gps")
    if quality == "none":
        return None
    return PositionFix(
        lat=lat, lon=lon,
        alt_m=_num(tpv, "altMSL", "alt", "altHAE") if mode == "3d" else None,
        speed_mps=_num(tpv, "speed"),
        heading_deg=_num(tpv, "track"),
        fix_quality=quality, fix_mode=mode, satellites=satellites,
        fix_time=parse_time(tpv.get("time")), source=GpsdProvider.source,
    )


def sky_satellites(sky: dict) -> int | None:
    """Satellites used in the solution: ``uSat`` (gpsd >= 3.21) or the count of ``used`` ones."""
    if isinstance(sky.get("uSat"), int):
        return int(sky["uSat"])
    sats = sky.get("satellites")
    if isinstance(sats, list):
        return sum(1 for s in sats if isinstance(s, dict) and s.get("used"))
    return None


class GpsdProvider(PositionProvider):
    """Latest fix from gpsd, kept current by a background reader thread."""

    source = "gpsd"

    def __init__(self, host: str = "127.0.0.1", port: int = 2947, max_fix_age_s: float = 5.0,
                 reconnect_initial_s: float = 0.5, reconnect_max_s: float = 30.0, connect_timeout_s: float = 5.0):
        super().__init__(max_fix_age_s=max_fix_age_s)
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self._backoff = Backoff(reconnect_initial_s, reconnect_max_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._satellites: int | None = None
        self.connected = threading.Event()
        self.connections = 0  # successful connections so far (reconnects show up here)

    @classmethod
    def from_config(cls, config: GpsdPositionConfig, max_fix_age_s: float = 5.0) -> GpsdProvider:
        return cls(config.host, config.port, max_fix_age_s, config.reconnect_initial_s, config.reconnect_max_s,
                   config.connect_timeout_s)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gpsd", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def handle_report(self, report: dict) -> None:
        """Apply one gpsd JSON report (TPV updates the fix, SKY the satellite count)."""
        kind = report.get("class")
        if kind == "TPV":
            self.publish(tpv_to_fix(report, self._satellites))
        elif kind == "SKY":
            sats = sky_satellites(report)
            if sats is not None:
                self._satellites = sats
                with self._lock:
                    if self._fix is not None:
                        self._fix = replace(self._fix, satellites=sats)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except OSError as exc:
                if self._stop.is_set():
                    break
                delay = self._backoff.next()
                log.warning("gpsd at %s:%d: %s; reconnecting in %.1f s", self.host, self.port, exc, delay)
                self._stop.wait(delay)
            finally:
                self.connected.clear()
                self._satellites = None
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None

    def _session(self) -> None:
        """One connection: watch, then read reports until gpsd closes it or stop()."""
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        self._sock = sock
        sock.settimeout(1.0)  # wake up regularly to notice stop()
        sock.sendall(WATCH_COMMAND)
        self.connections += 1
        self.connected.set()
        log.info("connected to gpsd at %s:%d", self.host, self.port)
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError("gpsd closed the connection")
            self._backoff.reset()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                line = line.strip()
                if not line:
                    continue
                try:
                    report = json.loads(line)
                except ValueError:
                    log.debug("gpsd: unreadable line %r", line[:80])
                    continue
                if isinstance(report, dict):
                    self.handle_report(report)
