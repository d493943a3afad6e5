"""Position from an NMEA 0183 receiver on a serial port, read directly (no gpsd).

For a vehicle computer where installing gpsd is not wanted, or a receiver on a UART
(``/dev/serial0`` on a Pi). Sentences used: GGA (position, altitude, quality, satellites),
RMC (position, speed, course, date, validity), VTG (speed, course) and GSA (2D/3D mode); any
talker (GP, GN, GL, GA, GB, BD). A sentence whose checksum does not match is dropped, as is one
without a checksum unless ``require_checksum`` is off: on a noisy serial line a corrupted
digit is otherwise a position kilometres away.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from datetime import date, datetime, time, timezone
from functools import reduce

from edge_agent.config.position import NmeaPositionConfig
from edge_agent.position.base import (
    Backoff,
    FixMode,
    FixQuality,
    PositionFix,
    PositionProvider,
    PositionUnavailableError,
)

log = logging.getLogger(__name__)

KNOTS_TO_MPS = 1852.0 / 3600.0
_GGA_QUALITY: dict[str, FixQuality] = {"0": "none", "1": "gps", "2": "dgps", "3": "gps", "4": "rtk_fixed",
                                       "5": "rtk_float", "6": "estimated", "7": "manual", "8": "simulated"}
_RMC_QUALITY: dict[str, FixQuality] = {"D": "dgps", "E": "estimated", "R": "rtk_fixed", "F": "rtk_float"}
_GSA_MODE: dict[str, FixMode] = {"1": "none", "2": "2d", "3": "3d"}


def checksum(body: str) -> str:
    """XOR of the characters between '$' and '*', as two upper-case hex digits."""
    return f"{reduce(lambda acc, ch: acc ^ ord(ch), body, 0):02X}"


def split_sentence(line: str | bytes, require_checksum: bool = True) -> list[str] | None:
    """Fields of a valid sentence (``fields[0]`` is e.g. ``GPGGA``), None when it is not one."""
    if isinstance(line, bytes):
        line = line.decode("ascii", errors="replace")
    line = line.strip()
    if not line.startswith("$"):
        return None
    body, star, given = line[1:].partition("*")
    if star:
        if given[:2].upper() != checksum(body):
            return None
    elif require_checksum:
        return None
    fields = body.split(",")
    if len(fields[0]) != 5 or not fields[0].isalnum():
        return None
    return fields


def _float(value: str) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _coordinate(value: str, hemisphere: str) -> float | None:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` with N/S/E/W to signed decimal degrees."""
    number = _float(value)
    if number is None or hemisphere not in ("N", "S", "E", "W"):
        return None
    degrees = int(number // 100)
    result = degrees + (number - degrees * 100) / 60.0
    return -result if hemisphere in ("S", "W") else result


def _utc_time(value: str) -> time | None:
    if len(value) < 6 or not value[:6].isdigit():
        return None
    seconds = _float(value[4:]) or 0.0
    try:
        return time(int(value[:2]), int(value[2:4]), int(seconds), int(round((seconds % 1) * 1e6)) % 1000000,
                    tzinfo=timezone.utc)
    except ValueError:
        return None


def _utc_date(value: str) -> date | None:
    """``ddmmyy``; the century is the one that puts the year closest to the system clock's."""
    if len(value) != 6 or not value.isdigit():
        return None
    this_year = datetime.now(timezone.utc).year
    yy = int(value[4:6])
    year = min((c * 100 + yy for c in (this_year // 100 - 1, this_year // 100, this_year // 100 + 1)),
               key=lambda y: abs(y - this_year))
    try:
        return date(year, int(value[2:4]), int(value[:2]))
    except ValueError:
        return None


class NmeaParser:
    """Combines GGA/RMC/VTG/GSA sentences into the current fix.

    ``feed`` returns True when the sentence changed the position or its validity (GGA, RMC),
    which is when a provider publishes. Counters of accepted and rejected sentences help
    diagnose a wrong baud rate (everything rejected) or a noisy line.
    """

    def __init__(self, require_checksum: bool = True):
        self.require_checksum = require_checksum
        self.accepted = 0
        self.rejected = 0
        self._valid = False
        self._lat: float | None = None
        self._lon: float | None = None
        self._alt: float | None = None
        self._speed: float | None = None
        self._heading: float | None = None
        self._quality: FixQuality = "none"
        self._mode: FixMode | None = None
        self._satellites: int | None = None
        self._time: time | None = None
        self._date: date | None = None

    def feed(self, line: str | bytes) -> bool:
        fields = split_sentence(line, self.require_checksum)
        if fields is None:
            self.rejected += 1
            return False
        kind = fields[0][2:]
        handler = {"GGA": self._gga, "RMC": self._rmc, "VTG": self._vtg, "GSA": self._gsa}.get(kind)
        if handler is None:
            return False  # a valid sentence this parser does not need (GSV, GLL, TXT, ...)
        try:
            changed = handler(fields)
        except IndexError:
            self.rejected += 1
            return False
        self.accepted += 1
        return changed

    def _set_position(self, lat: float | None, lon: float | None) -> None:
        if lat is not None and lon is not None:
            self._lat, self._lon = lat, lon

    def _gga(self, f: list[str]) -> bool:
        quality = _GGA_QUALITY.get(f[6], "none")
        self._time = _utc_time(f[1]) or self._time
        if quality == "none":
            self._valid = False
            self._quality = "none"
            return True
        self._set_position(_coordinate(f[2], f[3]), _coordinate(f[4], f[5]))
        self._quality = quality
        self._satellites = int(f[7]) if f[7].isdigit() else self._satellites
        self._alt = _float(f[9])
        self._valid = self._lat is not None
        return True

    def _rmc(self, f: list[str]) -> bool:
        self._time = _utc_time(f[1]) or self._time
        self._date = _utc_date(f[9]) or self._date
        mode = f[12][:1] if len(f) > 12 else ""
        if f[2] != "A" or mode == "N":
            self._valid = False
            self._quality = "none"
            return True
        self._set_position(_coordinate(f[3], f[4]), _coordinate(f[5], f[6]))
        knots = _float(f[7])
        self._speed = None if knots is None else knots * KNOTS_TO_MPS
        self._heading = _float(f[8])
        if self._quality == "none":  # no GGA seen yet: RMC alone is a plain fix
            self._quality = _RMC_QUALITY.get(mode, "gps")
        self._valid = self._lat is not None
        return True

    def _vtg(self, f: list[str]) -> bool:
        if len(f) > 2 and f[2] == "T":  # NMEA 2.x: value,unit pairs
            heading, knots, kmh = _float(f[1]), _float(f[5]), _float(f[7]) if len(f) > 7 else None
        else:  # NMEA 1.x: course true, course magnetic, knots, km/h
            heading, knots, kmh = _float(f[1]), _float(f[3]), _float(f[4]) if len(f) > 4 else None
        if len(f) > 9 and f[9][:1] == "N":
            return False
        if heading is not None:
            self._heading = heading
        if knots is not None:
            self._speed = knots * KNOTS_TO_MPS
        elif kmh is not None:
            self._speed = kmh / 3.6
        return False

    def _gsa(self, f: list[str]) -> bool:
        self._mode = _GSA_MODE.get(f[2], self._mode)
        return False

    @property
    def utc_time(self) -> time | None:
        """UTC time of day of the current epoch (GGA, RMC), None before any."""
        return self._time

    @property
    def utc_date(self) -> date | None:
        """UTC date of the last RMC, None before any (GGA carries no date)."""
        return self._date

    def fix(self) -> PositionFix | None:
        """The current fix, None while the receiver reports none."""
        if not self._valid or self._lat is None or self._lon is None:
            return None
        fix_time = datetime.combine(self._date, self._time) if self._date and self._time else None
        return PositionFix(lat=self._lat, lon=self._lon, alt_m=self._alt, speed_mps=self._speed,
                           heading_deg=self._heading, fix_quality=self._quality, fix_mode=self._mode,
                           satellites=self._satellites, fix_time=fix_time, source=NmeaSerialProvider.source)


class NmeaSerialProvider(PositionProvider):
    """Reads NMEA sentences from a serial device in a background thread.

    A missing or unplugged device is retried with exponential backoff (a USB receiver can be
    plugged in after boot, or re-enumerate on a bump in the road).
    """

    source = "nmea"

    def __init__(self, device: str, baudrate: int = 9600, require_checksum: bool = True,
                 max_fix_age_s: float = 5.0, reconnect_initial_s: float = 0.5, reconnect_max_s: float = 30.0):
        super().__init__(max_fix_age_s=max_fix_age_s)
        if importlib.util.find_spec("serial") is None:
            raise PositionUnavailableError("position type 'nmea' needs pyserial: pip install pyserial "
                                           "(or use type: gpsd)")
        self.device, self.baudrate = device, baudrate
        self.parser = NmeaParser(require_checksum)
        self._backoff = Backoff(reconnect_initial_s, reconnect_max_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.opens = 0  # successful opens of the device so far

    @classmethod
    def from_config(cls, config: NmeaPositionConfig, max_fix_age_s: float = 5.0) -> NmeaSerialProvider:
        return cls(config.device, config.baudrate, config.require_checksum, max_fix_age_s,
                   config.reconnect_initial_s, config.reconnect_max_s)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nmea", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        import serial

        while not self._stop.is_set():
            try:
                with serial.Serial(self.device, self.baudrate, timeout=0.5) as port:
                    self.opens += 1
                    self.connected.set()
                    log.info("reading NMEA from %s at %d baud", self.device, self.baudrate)
                    self._read(port)
            except (serial.SerialException, OSError) as exc:
                if self._stop.is_set():
                    break
                delay = self._backoff.next()
                log.warning("NMEA receiver %s: %s; retrying in %.1f s", self.device, exc, delay)
                self._stop.wait(delay)
            finally:
                self.connected.clear()

    def _read(self, port) -> None:
        while not self._stop.is_set():
            line = port.readline()
            if not line:
                continue
            self._backoff.reset()
            if self.parser.feed(line):
                self.publish(self.parser.fix())
            elif not self.parser.accepted and self.parser.rejected and self.parser.rejected % 200 == 0:
                log.warning("NMEA receiver %s: %d lines and no valid sentence yet: check baudrate (%d) and "
                            "device", self.device, self.parser.rejected, self.baudrate)
