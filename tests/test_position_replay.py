"""``position: {provider: {type: nmea-file}}``: a recorded NMEA log replayed at a video's media times.

Generated logs of known drives (a straight road, then a curve) at 1 Hz: the position at any media
time must be where the drive was, under both alignment rules (offset_s, video_start_utc), across
midnight, without dates (GGA only), and never outside the log."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_agent.config.loader import load_config
from edge_agent.config.position import PositionConfig
from edge_agent.errors import UserError
from edge_agent.position import NmeaFileProvider, NmeaLog, PositionError, create_position_provider, write_nmea_log
from edge_agent.position.history import enu_to_latlon, latlon_to_enu
from edge_agent.position.nmea import checksum
from edge_agent.video.synthetic import Track

LAT0, LON0 = 52.52, 13.405
SPEED = 12.0
LOG_START = datetime(2024, 5, 1, 9, 0, 0, tzinfo=timezone.utc)


def drive_track() -> Track:
    return Track(heading_deg=70.0).straight(60.0).arc(80.0, 45.0, right=True).straight(40.0)


def write_drive_log(path: Path, track: Track, start: datetime = LOG_START, seconds: int = 14, rate_hz: float = 1.0,
                    speed: float = SPEED) -> Path:
    epochs = []
    for k in range(int(seconds * rate_hz) + 1):
        t = k / rate_hz
        e, n, h = track.pose(speed * t)
        lat, lon = enu_to_latlon(LAT0, LON0, e, n)
        epochs.append((start + timedelta(seconds=t), lat, lon, speed, h))
    return write_nmea_log(path, epochs)


def error_m(fix, track: Track, s: float) -> float:
    e, n, _ = track.pose(s)
    fe, fn = latlon_to_enu(LAT0, LON0, fix.lat, fix.lon)
    return math.hypot(fe - e, fn - n)


def frame(position_s: float | None) -> SimpleNamespace:
    return SimpleNamespace(position_s=position_s, monotonic_ts=0.0)


def test_straight_and_curved_drive_at_any_media_time(tmp_path):
    track = drive_track()
    log = write_drive_log(tmp_path / "drive.nmea", track)
    p = NmeaFileProvider(log)  # the video starts at the log's first fix
    worst_straight = worst_curve = 0.0
    for i in range(131):
        t = i * 0.1
        fix = p.fix_for_frame(frame(t))
        assert fix.has_fix and fix.source == "nmea-file"
        err = error_m(fix, track, SPEED * t)
        if SPEED * t <= 60:
            worst_straight = max(worst_straight, err)
        else:
            worst_curve = max(worst_curve, err)
        assert fix.heading_deg == pytest.approx(track.pose(SPEED * t)[2], abs=1.5)  # where a curve ends
        assert fix.speed_mps == pytest.approx(SPEED, abs=0.01)
        assert p.speed_at(t) == pytest.approx(SPEED, abs=0.01)
        assert p.capture_time(frame(t)) == pytest.approx(LOG_START.timestamp() + t)
        assert fix.fix_time == LOG_START + timedelta(seconds=t) or abs(
            (fix.fix_time - (LOG_START + timedelta(seconds=t))).total_seconds()) < 1e-3
    assert worst_straight < 0.01   # the log's own resolution (6 decimals of minutes: 2 mm)
    # 12 m/s on a 45 m radius at 1 Hz: the chord alone would be 40 cm off; what is left is where the
    # curvature changes inside a fix interval (straight -> arc), which 1 Hz fixes cannot show
    assert worst_curve < 0.06
    assert p.latest().has_fix      # the last frame looked up


def test_offset_and_video_start_utc_alignment(tmp_path):
    track = drive_track()
    log = write_drive_log(tmp_path / "drive.nmea", track)
    # the logger ran 3.5 s before the camera started
    by_offset = NmeaFileProvider(log, offset_s=3.5)
    by_utc = NmeaFileProvider(log, video_start_utc=LOG_START + timedelta(seconds=3.5))
    by_both = NmeaFileProvider(log, video_start_utc=LOG_START + timedelta(seconds=3.0), offset_s=0.5)
    for t in (0.0, 1.25, 6.6):
        for p in (by_offset, by_utc, by_both):
            fix = p.fix_for_frame(frame(t))
            assert error_m(fix, track, SPEED * (t + 3.5)) < 0.02
            assert p.capture_time(frame(t)) == pytest.approx(LOG_START.timestamp() + 3.5 + t)


def test_outside_the_log_there_is_no_position(tmp_path, caplog):
    track = drive_track()
    log = write_drive_log(tmp_path / "drive.nmea", track, seconds=10)
    p = NmeaFileProvider(log, offset_s=-3.0, max_fix_age_s=2.0)   # video started 3 s before the logger
    # 1 s before the first fix: dead-reckoned back (within max_fix_age_s); 2.5 s before: nothing
    assert error_m(p.fix_for_frame(frame(2.0)), track, -SPEED * 1.0) < 0.02
    with caplog.at_level(logging.WARNING):
        assert not p.fix_for_frame(frame(0.5)).has_fix
        assert not p.fix_for_frame(frame(16.0)).has_fix  # 1 s past the end: dead reckoning still...
    assert "outside the log's fixes" in caplog.text
    assert p.fix_for_frame(frame(13.5)).has_fix            # ...while within max_fix_age_s of the last fix
    assert p.speed_at(0.5) is None
    assert not p.fix_for_frame(frame(None)).has_fix        # a live source has no media time


def test_gga_only_log_has_no_dates(tmp_path):
    track = drive_track()
    full = write_drive_log(tmp_path / "drive.nmea", track, seconds=6)
    gga = tmp_path / "gga.nmea"
    gga.write_text("".join(line + "\n" for line in full.read_text().splitlines() if "GGA" in line))
    p = NmeaFileProvider(gga, offset_s=1.0)
    fix = p.fix_for_frame(frame(2.5))
    assert error_m(fix, track, SPEED * 3.5) < 0.02  # linear between fixes on the straight: exact
    assert fix.fix_time is None and fix.speed_mps is None and p.capture_time(frame(2.5)) is None
    with pytest.raises(PositionError, match="no RMC dates"):
        NmeaFileProvider(gga, video_start_utc=LOG_START)


def test_a_log_across_midnight(tmp_path):
    track = drive_track()
    start = datetime(2024, 5, 1, 23, 59, 57, tzinfo=timezone.utc)
    log = write_drive_log(tmp_path / "midnight.nmea", track, start=start, seconds=6)
    # receivers send GGA first: at 00:00:00 its time of day has wrapped before RMC brings the new date
    parsed = NmeaLog.read(log)
    assert list(parsed.times - parsed.times[0]) == [0, 1, 2, 3, 4, 5, 6]
    p = NmeaFileProvider(log)
    assert error_m(p.fix_for_frame(frame(4.5)), track, SPEED * 4.5) < 0.02
    assert p.capture_time(frame(4.5)) == pytest.approx(start.timestamp() + 4.5)


def test_damaged_lines_and_receiver_loss(tmp_path):
    track = drive_track()
    lines = write_drive_log(tmp_path / "drive.nmea", track, seconds=8).read_text().splitlines()
    lines[3] = lines[3].replace("5231", "5931")                      # a corrupted digit: checksum fails
    body = "GPRMC,090004.00,V,,,,,,,010524,,,N"                       # the receiver lost the fix at 4 s
    damaged = lines[:12] + [f"${body}*{checksum(body)}", "garbage \x00\xff"] + lines[15:]
    path = tmp_path / "damaged.nmea"
    path.write_bytes(("\r\n".join(damaged) + "\r\n").encode("latin-1"))
    p = NmeaFileProvider(path)
    assert error_m(p.fix_for_frame(frame(1.0)), track, SPEED * 1.0) < 0.02
    assert not p.fix_for_frame(frame(4.2)).has_fix   # no position while the receiver had none
    assert p.fix_for_frame(frame(5.5)).has_fix


def test_a_file_without_fixes_is_refused(tmp_path):
    empty = tmp_path / "empty.nmea"
    empty.write_text("hello\n$GPTXT,01,01,02,ANTENNA OK*35\n")
    with pytest.raises(PositionError, match="no valid fix"):
        NmeaFileProvider(empty)


def test_config(tmp_path):
    log = write_drive_log(tmp_path / "drive.nmea", drive_track(), seconds=3)
    cfg = PositionConfig.model_validate({"provider": {"type": "nmea-file", "path": str(log), "offset_s": 2.5,
                                                      "video_start_utc": "2024-05-01T09:00:00Z"}})
    p = create_position_provider(cfg)
    assert isinstance(p, NmeaFileProvider) and p.start_s == pytest.approx(LOG_START.timestamp() + 2.5)
    loaded = load_config(None, {"camera.source": str(tmp_path), "position.provider": {
        "type": "nmea-file", "path": str(log)}})
    assert loaded.position.provider.type == "nmea-file"
    for bad, match in (({"path": str(tmp_path / "missing.nmea")}, "NMEA log not found"),
                       ({"path": str(log), "video_start_utc": "2024-05-01T09:00:00"}, "time zone"),
                       ({"path": str(log), "offset_s": float("inf")}, "finite"),
                       ({"path": str(log), "device": "/dev/ttyUSB0"}, "unknown key")):
        with pytest.raises((UserError, ValueError), match=match):
            load_config(None, {"camera.source": str(tmp_path),
                               "position.provider": {"type": "nmea-file", **bad}})
