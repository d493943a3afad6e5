"""A recorded NMEA 0183 log replayed in step with a recorded video (``type: nmea-file``).

Survey crews record video and GNSS in the field and process them later. The log gives its own
timeline: the UTC date and time of its RMC/GGA sentences. A frame's media time (``position_s``:
seconds from the start of the video file) maps onto it by one rule::

    log time of a frame = start + position_s
    start = (video_start_utc  if configured,  else the time of the log's first valid fix) + offset_s

So with nothing configured the video's first frame is taken at the log's first fix (both
recorders started together); ``offset_s`` shifts that (positive: the video started later than
the log, e.g. the logger ran 12.5 s before the camera); ``video_start_utc`` pins the first
frame to an absolute UTC time (e.g. read off a clock filmed at the start, or the camera's own
clock when it is GPS-synchronised), and ``offset_s`` then corrects it. How to find the offset
in practice: docs/measurement.md ("Recorded surveys").

Why media time and not the host's clocks: a recording is processed faster or slower than real
time, so nothing measured while processing says when a frame was taken; the file's own
frame times do, and they are what the speed-adaptive frame selector already passes to
``speed_at``. The position of a frame is the log interpolated at its log time
(``history.FixTimeline``), and the message's capture time (``ts``) becomes that UTC time too.

The log is read once, at start, into columns (a day at 10 Hz is ~900,000 epochs: numpy arrays,
not objects). Sentences of one epoch (same UTC time: GGA, RMC, VTG, GSA in any order) make one
fix. A log without any RMC date (GGA only) has a timeline without a date: ``offset_s`` works,
``video_start_utc`` cannot be matched and is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timezone
from pathlib import Path

import numpy as np

from edge_agent.config.position import NmeaFilePositionConfig
from edge_agent.position.base import FrameTimes, PositionError, PositionProvider
from edge_agent.position.fix import FixMode, FixQuality, PositionFix, no_fix
from edge_agent.position.history import FixTimeline
from edge_agent.position.nmea import KNOTS_TO_MPS, NmeaParser, checksum
from edge_agent.util.timestamps import iso_utc

log = logging.getLogger(__name__)

DAY_S = 86400.0
MAX_LOG_BYTES = 2 << 30  # 2 GiB: a week of 10 Hz NMEA; anything bigger is not a survey log


def _tod(t: time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


@dataclass
class _Epoch:
    utc_date: date | None
    tod: float
    fix: PositionFix | None


def _epochs(lines: Iterable[bytes | str], parser: NmeaParser) -> list[_Epoch]:
    """One entry per UTC time stamp, with the parser's state after the epoch's last sentence."""
    out: list[_Epoch] = []
    for line in lines:
        before = parser.accepted
        parser.feed(line)
        if parser.accepted == before or parser.utc_time is None:
            continue
        tod = _tod(parser.utc_time)
        fix = parser.fix()
        if out and out[-1].tod == tod:
            out[-1] = _Epoch(parser.utc_date or out[-1].utc_date, tod, fix)
        else:
            out.append(_Epoch(parser.utc_date, tod, fix))
    return out


def _timeline(epochs: list[_Epoch]) -> tuple[list[float], bool]:
    """Seconds on the log's timeline per epoch (UTC epoch seconds when the log has dates, else
    seconds from the first day's midnight), crossing midnight forward."""
    first = next((i for i, e in enumerate(epochs) if e.utc_date is not None), None)
    times: list[float] = []
    if first is None:
        day = 0.0
        for e in epochs:
            t = day + e.tod
            if times and t < times[-1] - DAY_S / 2:
                day += DAY_S
                t += DAY_S
            times.append(t)
        return times, False
    d0 = epochs[first].utc_date
    assert d0 is not None
    t_first = datetime.combine(d0, time(tzinfo=timezone.utc)).timestamp() + epochs[first].tod
    for e in epochs[:first]:  # before the first date: the nearest time of day to the first dated epoch
        times.append(t_first + ((e.tod - epochs[first].tod + DAY_S / 2) % DAY_S - DAY_S / 2))
    current = d0
    for e in epochs[first:]:
        current = e.utc_date or current
        t = datetime.combine(current, time(tzinfo=timezone.utc)).timestamp() + e.tod
        if times and t < times[-1] - DAY_S / 2:  # past midnight before the next RMC brought the new date
            t += DAY_S
        times.append(t)
    return times, True


class NmeaLog(FixTimeline):
    """A recorded log as columns on its own timeline (see the module docstring)."""

    def __init__(self, epochs: list[_Epoch], times: list[float], dated: bool, source: str = "nmea-file"):
        keep: list[int] = []
        for i, t in enumerate(times):
            if not keep or t > times[keep[-1]]:
                keep.append(i)
        self.out_of_order = len(times) - len(keep)  # epochs whose time went backwards (receiver reset)
        self.dated, self.source = dated, source
        self.times = np.array([times[i] for i in keep], dtype=np.float64)
        fixes = [epochs[i].fix for i in keep]

        def col(name: str) -> np.ndarray:
            return np.array([math.nan if f is None or getattr(f, name) is None else getattr(f, name)
                             for f in fixes], dtype=np.float64)

        self.valid = np.array([f is not None and f.has_fix for f in fixes], dtype=bool)
        self.lat, self.lon, self.alt = col("lat"), col("lon"), col("alt_m")
        self.speed, self.heading = col("speed_mps"), col("heading_deg")
        self.quality: list[FixQuality] = [f.fix_quality if f is not None else "none" for f in fixes]
        self.mode: list[FixMode | None] = [f.fix_mode if f is not None else None for f in fixes]
        self.sats = np.array([-1 if f is None or f.satellites is None else f.satellites for f in fixes], dtype=np.int32)

    @classmethod
    def read(cls, path: str | Path, require_checksum: bool = True) -> NmeaLog:
        path = Path(path)
        try:
            if path.stat().st_size > MAX_LOG_BYTES:
                raise PositionError(f"{path}: over {MAX_LOG_BYTES >> 30} GiB; split the NMEA log per survey")
            with path.open("rb") as f:
                parser = NmeaParser(require_checksum)
                epochs = _epochs(f, parser)
        except OSError as exc:
            raise PositionError(f"cannot read the NMEA log {path}: {exc.strerror or exc}") from None
        times, dated = _timeline(epochs)
        result = cls(epochs, times, dated)
        if not result.valid.any():
            raise PositionError(f"{path}: no valid fix in {parser.accepted} NMEA sentences ({parser.rejected} "
                                "rejected): is it an NMEA 0183 log with GGA or RMC sentences?")
        if result.out_of_order:
            log.warning("%s: %d epochs whose time went backwards were skipped", path, result.out_of_order)
        return result

    def __len__(self) -> int:
        return len(self.times)

    def _time(self, i: int) -> float:
        return float(self.times[i])

    def _index_after(self, t: float) -> int:
        return int(np.searchsorted(self.times, t, side="right"))

    def _fix(self, i: int) -> PositionFix | None:
        if not self.valid[i]:
            return None

        def num(a: np.ndarray) -> float | None:
            v = float(a[i])
            return None if math.isnan(v) else v

        sats = int(self.sats[i])
        return PositionFix(lat=float(self.lat[i]), lon=float(self.lon[i]), alt_m=num(self.alt),
                           speed_mps=num(self.speed), heading_deg=num(self.heading), fix_quality=self.quality[i],
                           fix_mode=self.mode[i], satellites=None if sats < 0 else sats,
                           fix_time=datetime.fromtimestamp(self._time(i), timezone.utc) if self.dated else None,
                           source=self.source)

    @property
    def first_fix_s(self) -> float:
        return float(self.times[int(np.argmax(self.valid))])

    @property
    def last_fix_s(self) -> float:
        return float(self.times[len(self.valid) - 1 - int(np.argmax(self.valid[::-1]))])


class NmeaFileProvider(PositionProvider):
    """Positions from a recorded NMEA log, looked up at each frame's media time."""

    source = "nmea-file"

    def __init__(self, path: str | Path, offset_s: float = 0.0, video_start_utc: datetime | None = None,
                 require_checksum: bool = True, max_fix_age_s: float = 5.0):
        super().__init__(max_fix_age_s=max_fix_age_s)
        self.path = Path(path)
        self.log = NmeaLog.read(self.path, require_checksum)
        if video_start_utc is not None and not self.log.dated:
            raise PositionError(f"{self.path}: the log has no RMC dates, so video_start_utc cannot be placed on "
                                "it; use offset_s (seconds from the log's first fix to the video's first frame)")
        anchor = video_start_utc.timestamp() if video_start_utc is not None else self.log.first_fix_s
        self.start_s = anchor + offset_s  # log time of media time 0
        self._last = no_fix(self.source)
        self._warned: set[str] = set()
        log.info("%s: %d epochs, fixes %s .. %s; the video's first frame is at %s", self.path, len(self.log),
                 self._fmt(self.log.first_fix_s), self._fmt(self.log.last_fix_s), self._fmt(self.start_s))

    @classmethod
    def from_config(cls, config: NmeaFilePositionConfig, max_fix_age_s: float = 5.0) -> NmeaFileProvider:
        return cls(config.path, config.offset_s, config.video_start_utc, config.require_checksum, max_fix_age_s)

    def _fmt(self, t: float) -> str:
        if self.log.dated:
            return iso_utc(t)
        return f"{t:.2f} s"

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def log_time(self, media_s: float) -> float:
        """Where media time ``media_s`` of the video lies on the log's timeline."""
        return self.start_s + media_s

    def fix_at_media(self, media_s: float) -> PositionFix:
        t = self.log_time(media_s)
        fix = self.log.at(t, self.max_fix_age_s, self.source)
        if not fix.has_fix and (t < self.log.first_fix_s or t > self.log.last_fix_s):
            self._warn_once("outside", "%s: media time %.2f s is log time %s, outside the log's fixes (%s .. %s): "
                            "no position; check offset_s / video_start_utc", self.path, media_s, self._fmt(t),
                            self._fmt(self.log.first_fix_s), self._fmt(self.log.last_fix_s))
        return replace(fix, source=self.source)

    def fix_for_frame(self, frame: FrameTimes) -> PositionFix:
        if frame.position_s is None:
            self._warn_once("live", "position type nmea-file needs recorded media with frame times (a video file, "
                            "or an image folder with camera.fps); this source has none: no position")
            return no_fix(self.source)
        fix = self.fix_at_media(frame.position_s)
        with self._lock:
            self._last = fix
        return fix

    def fix_at(self, monotonic_ts: float) -> PositionFix:
        return self.latest()

    def capture_time(self, frame: FrameTimes) -> float | None:
        if frame.position_s is None or not self.log.dated:
            return None
        return self.log_time(frame.position_s)

    def speed_at(self, timeline_s: float) -> float | None:
        fix = self.fix_at_media(timeline_s)
        return fix.speed_mps if fix.has_fix else None

    def latest(self) -> PositionFix:
        """The fix of the last frame looked up (a replay has no 'now')."""
        with self._lock:
            return self._last


# -- writing logs (generated drives for the demo and the tests) ----------------------------------------
def _nmea(body: str) -> str:
    return f"${body}*{checksum(body)}\r\n"


def _coord(value: float, lat: bool) -> str:
    """Degrees -> ``ddmm.mmmmmm,N`` / ``dddmm.mmmmmm,E`` (6 decimals of minutes: ~2 mm)."""
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    v = abs(value)
    deg = int(v)
    minutes = (v - deg) * 60.0
    if round(minutes, 6) >= 60.0:
        deg, minutes = deg + 1, 0.0
    return f"{deg:0{2 if lat else 3}d}{minutes:09.6f},{hemi}"


def nmea_epoch(t: datetime, lat: float, lon: float, speed_mps: float | None, heading_deg: float | None,
               alt_m: float = 50.0, satellites: int = 12, valid: bool = True) -> list[str]:
    """GGA, RMC and VTG sentences of one epoch, as a receiver in high-precision mode writes them."""
    t = t.astimezone(timezone.utc)
    hms = f"{t:%H%M%S}.{t.microsecond // 10000:02d}"
    la, lo = _coord(lat, True), _coord(lon, False)
    knots = "" if speed_mps is None else f"{speed_mps / KNOTS_TO_MPS:.3f}"
    kmh = "" if speed_mps is None else f"{speed_mps * 3.6:.3f}"
    course = "" if heading_deg is None else f"{heading_deg % 360.0:.2f}"
    if not valid:
        return [_nmea(f"GPGGA,{hms},,,,,0,00,99.9,,M,,M,,"), _nmea(f"GPRMC,{hms},V,,,,,,,{t:%d%m%y},,,N")]
    return [_nmea(f"GPGGA,{hms},{la},{lo},1,{satellites:02d},0.8,{alt_m:.1f},M,45.0,M,,"),
            _nmea(f"GPRMC,{hms},A,{la},{lo},{knots},{course},{t:%d%m%y},,,A"),
            _nmea(f"GPVTG,{course},T,,M,{knots},N,{kmh},K,A")]


def write_nmea_log(path: str | Path, epochs: Iterable[tuple[datetime, float, float, float | None, float | None]],
                   ) -> Path:
    """An NMEA log of ``(utc time, lat, lon, speed m/s, course deg)`` epochs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="ascii", newline="") as f:
        for t, lat, lon, speed, heading in epochs:
            f.writelines(nmea_epoch(t, lat, lon, speed, heading))
    return path
