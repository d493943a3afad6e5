"""The position at a frame's capture time: interpolation between fixes, dead reckoning, bounds, and the
live history's clock (known tracks: a straight line, a circle, a heading through north)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from edge_agent.position import FixedPositionProvider, PositionFix, PositionProvider
from edge_agent.position.history import (
    FixHistory,
    circular_lerp,
    enu_to_latlon,
    extrapolate,
    interpolate,
    latlon_to_enu,
)

LAT0, LON0 = 48.137, 11.575
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


def fix_at(e: float, n: float, speed: float | None = None, heading: float | None = None,
           t: float | None = None) -> PositionFix:
    lat, lon = enu_to_latlon(LAT0, LON0, e, n)
    return PositionFix(lat=lat, lon=lon, speed_mps=speed, heading_deg=heading, fix_quality="gps",
                       fix_time=None if t is None else T0 + timedelta(seconds=t), source="test")


def off_m(fix: PositionFix, e: float, n: float) -> float:
    assert fix.lat is not None and fix.lon is not None
    fe, fn = latlon_to_enu(LAT0, LON0, fix.lat, fix.lon)
    return math.hypot(fe - e, fn - n)


def circle(t: float, radius: float = 40.0, speed: float = 10.0) -> tuple[float, float, float]:
    """A clockwise circle through the origin, heading north at t = 0: (east, north, heading)."""
    a = speed * t / radius
    return radius - radius * math.cos(a), radius * math.sin(a), math.degrees(a) % 360.0


def test_local_plane_round_trip_and_scale():
    lat, lon = enu_to_latlon(LAT0, LON0, 30.0, -40.0)
    e, n = latlon_to_enu(LAT0, LON0, lat, lon)
    assert (e, n) == (pytest.approx(30.0, abs=1e-6), pytest.approx(-40.0, abs=1e-6))
    # one arc-second of latitude is ~30.9 m at 48 deg (WGS84 meridian radius)
    assert latlon_to_enu(LAT0, LON0, LAT0 + 1 / 3600, LON0)[1] == pytest.approx(30.88, abs=0.01)


def test_straight_line_interpolation_is_exact():
    f0, f1 = fix_at(0, 0, 14.0, 90.0), fix_at(14.0, 0, 14.0, 90.0)
    for frac in (0.0, 0.1, 0.37, 0.5, 0.99, 1.0):
        got = interpolate(f0, 10.0, f1, 11.0, 10.0 + frac)
        assert off_m(got, 14.0 * frac, 0.0) < 1e-4
        assert got.heading_deg == pytest.approx(90.0) and got.speed_mps == pytest.approx(14.0)
    assert interpolate(f0, 10.0, f1, 11.0, 10.1).age_s == pytest.approx(0.1)


def test_curve_interpolation_follows_the_arc_at_1_hz():
    """10 m/s on a 40 m radius, one fix a second: the chord is 31 cm inside the arc mid-interval;
    the interpolation with the fixes' velocities stays within a few millimetres."""
    fixes = [(float(k), fix_at(*circle(k)[:2], 10.0, circle(k)[2])) for k in range(6)]
    worst = 0.0
    for i in range(50):
        t = i * 0.1
        k = int(t)
        got = interpolate(fixes[k][1], k, fixes[k + 1][1], k + 1, t)
        e, n, h = circle(t)
        worst = max(worst, off_m(got, e, n))
        assert got.heading_deg == pytest.approx(h, abs=0.01)
    assert worst < 0.005
    # without velocities it is linear: the chord, ~31 cm off at mid-interval
    plain = [(t, replace(f, speed_mps=None)) for t, f in fixes]
    e, n, _ = circle(2.5)
    assert off_m(interpolate(plain[2][1], 2, plain[3][1], 3, 2.5), e, n) == pytest.approx(0.31, abs=0.02)


def test_inconsistent_velocity_falls_back_to_linear():
    """A speed that does not match the distance between the fixes (a glitch) must not bend the path."""
    f0, f1 = fix_at(0, 0, 30.0, 0.0), fix_at(0, 5.0, 30.0, 90.0)
    got = interpolate(f0, 0.0, f1, 1.0, 0.5)
    assert off_m(got, 0.0, 2.5) < 1e-3


def test_heading_interpolates_through_north():
    assert circular_lerp(350.0, 10.0, 0.5) == pytest.approx(0.0)
    assert circular_lerp(350.0, 10.0, 0.25) == pytest.approx(355.0)
    assert circular_lerp(10.0, 350.0, 0.75) == pytest.approx(355.0)
    got = interpolate(fix_at(0, 0, None, 358.0), 0, fix_at(0, 5, None, 4.0), 1, 0.5)  # no speed: on the circle
    assert got.heading_deg == pytest.approx(1.0)
    # with velocities the heading is the direction of the interpolated path: through north on the circle
    (e0, n0, h0), (e1, n1, h1) = circle(-0.5), circle(0.5)
    mid = interpolate(fix_at(e0, n0, 10.0, h0), -0.5, fix_at(e1, n1, 10.0, h1), 0.5, 0.0)
    assert h0 > 350 and h1 < 10 and min(mid.heading_deg, 360 - mid.heading_deg) < 0.01
    assert off_m(mid, 0.0, 0.0) < 0.002


def test_dead_reckoning_and_its_limits():
    f = fix_at(0, 0, 14.0, 45.0, t=0.0)
    ahead = extrapolate(f, 100.0, 100.1)
    assert off_m(ahead, 1.4 * math.sin(math.radians(45)), 1.4 * math.cos(math.radians(45))) < 1e-4
    assert ahead.age_s == pytest.approx(0.1) and ahead.fix_time == T0 + timedelta(seconds=0.1)
    held = extrapolate(replace(f, heading_deg=None), 100.0, 101.0)  # no course: position held
    assert off_m(held, 0, 0) < 1e-6 and held.age_s == pytest.approx(1.0)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_provider_answers_for_the_frame_not_for_now():
    """Fixes at 1 Hz on a straight road at 14 m/s; a frame captured 0.3 s after a fix is placed 4.2 m on,
    whether it is reported before the next fix arrives (dead reckoning) or after (interpolation)."""
    clock = Clock()
    p = PositionProvider(max_fix_age_s=2.0, clock=clock)
    p.publish(fix_at(0, 0, 14.0, 0.0))
    frame = SimpleNamespace(monotonic_ts=clock.t + 0.3, position_s=None)
    clock.t += 0.5
    assert off_m(p.fix_for_frame(frame), 0, 4.2) < 1e-3          # the next fix is not there yet
    clock.t += 0.5
    p.publish(fix_at(0, 14.0, 14.0, 0.0))
    clock.t += 0.4
    got = p.fix_for_frame(frame)
    assert off_m(got, 0, 4.2) < 1e-3 and got.age_s == pytest.approx(0.3)
    assert off_m(p.latest(), 0, 14.0) < 1e-6                        # latest() is still the newest fix
    assert p.fix_for_frame(SimpleNamespace(monotonic_ts=clock.t + 2.5, position_s=None)).has_fix is False
    assert p.fix_for_frame(SimpleNamespace(monotonic_ts=clock.t - 4.0, position_s=None)).has_fix is False


def test_a_reported_loss_of_fix_is_not_bridged():
    clock = Clock()
    p = PositionProvider(max_fix_age_s=5.0, clock=clock)
    p.publish(fix_at(0, 0, 10.0, 0.0))
    clock.t += 1.0
    p.publish(None)  # the receiver says: no fix (a tunnel)
    clock.t += 1.0
    p.publish(fix_at(0, 20, 10.0, 0.0))
    assert p.fix_at(1000.5).has_fix                 # before the loss: dead reckoning from the first fix
    assert off_m(p.fix_at(1000.5), 0, 5.0) < 1e-3
    assert not p.fix_at(1001.5).has_fix             # while the receiver had none
    assert p.fix_at(1002.0).has_fix


def test_history_places_fixes_at_their_epoch_not_their_arrival():
    """Arrival jitter (a host that reads late) and the sentences of one epoch (GGA, then RMC 80 ms later)
    must not move positions along the road: fixes sit at receiver time + the least observed delay."""
    h = FixHistory()
    delays = [0.05, 0.25, 0.08, 0.05, 0.30, 0.06]
    for k, delay in enumerate(delays):
        gga = fix_at(0, 10.0 * k, None, None, t=k)  # GGA: position, no speed yet
        h.add(500.0 + k + delay, gga)
        h.add(500.0 + k + delay + 0.08, replace(gga, speed_mps=10.0, heading_deg=0.0))  # RMC of the same epoch
    assert len(h) == len(delays)
    # epoch k sits at 500 + k + 0.05 (the smallest delay): a frame at 503.55 is half-way between epochs 3 and 4
    got = h.at(503.55, 5.0)
    assert off_m(got, 0, 35.0) < 1e-3 and got.speed_mps == pytest.approx(10.0)


def test_history_is_bounded():
    h = FixHistory(keep_s=10.0, max_entries=50)
    for k in range(200):
        h.add(float(k) * 0.1, fix_at(0, k, 10.0, 0.0))
    assert len(h) == 50
    h2 = FixHistory(keep_s=10.0)
    for k in range(100):
        h2.add(float(k), fix_at(0, k, 10.0, 0.0))
    assert len(h2) <= 12


def test_fixed_provider_is_the_same_for_every_frame():
    p = FixedPositionProvider(52.5, 13.4, heading_deg=90.0)
    frame = SimpleNamespace(monotonic_ts=123.0, position_s=4.0)
    assert p.fix_for_frame(frame) == p.latest() and p.fix_for_frame(frame).heading_deg == 90.0
    assert p.capture_time(frame) is None


def test_heading_rounding_never_reaches_360():
    assert fix_at(0, 0, 1.0, 359.97).to_dict()["heading_deg"] == 0.0
