"""Where a crack is: the pixel -> vehicle -> WGS84 rule of the v2 plan, against hand-worked cases and
against synthetic drives whose cracks have a known place in the world."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely import LineString, Point

from office.geo import (
    Camera,
    PolylineBatch,
    enu_offsets,
    enu_to_lonlat,
    enu_to_vehicle,
    geolocate_polyline,
    pixel_to_vehicle,
    vehicle_to_enu,
    vehicle_to_pixel,
)
from office.synthetic import ArcTrack, Drive, StraightTrack, Track, WorldCrack, crack_on_track, simulate

W, H = 1280, 720
LON0, LAT0 = 4.3517, 52.0116


def centre_px(du_m: float = 0.0, dv_m: float = 0.0, gsd: float = 2.0) -> tuple[int, int]:
    """The pixel whose centre is du_m right / dv_m down of the image centre (exact for these numbers)."""
    return int(W / 2 - 0.5 + du_m * 1000 / gsd + 0.5), int(H / 2 - 0.5 + dv_m * 1000 / gsd + 0.5)


@pytest.mark.parametrize(("forward", "expected"), [
    # a pixel 1 m right of and 0.5 m above the image centre: (du, dv) = (+1, -0.5)
    ("up", (0.5, 1.0)),       # ahead = -dv, right = +du
    ("down", (-0.5, -1.0)),   # ahead = +dv, right = -du
    ("left", (-1.0, 0.5)),    # ahead = -du, right = -dv
    ("right", (1.0, -0.5)),   # ahead = +du, right = +dv
])
def test_pixel_to_vehicle_follows_the_table_of_the_plan(forward: str, expected: tuple[float, float]) -> None:
    # pixel centre u + 0.5: u = 640 - 0.5 + 500 px -> du = (1139 + 0.5 - 640) * 2 mm = 0.999 m
    u, v = 1140 - 0.5, 360 - 0.5 - 250       # non-integer to hit +1 m / -0.5 m exactly
    ahead, right = pixel_to_vehicle(u, v, W, H, 2.0, 2.0, forward)  # type: ignore[arg-type]
    assert (float(ahead), float(right)) == pytest.approx(expected, abs=1e-9)


def test_mount_offsets_and_the_image_centre() -> None:
    # the image centre is the point between pixels 639/640 and 359/360
    ahead, right = pixel_to_vehicle(639.5, 359.5, W, H, 1.6, 1.6, "up", 1.5, -0.25)
    assert (float(ahead), float(right)) == pytest.approx((1.5, -0.25), abs=1e-12)
    # pixel (0, 0) is half a pixel inside the top-left corner
    ahead, right = pixel_to_vehicle(0, 0, W, H, 2.0, 4.0, "up")
    assert float(right) == pytest.approx(-(640 - 0.5) * 0.002)
    assert float(ahead) == pytest.approx((360 - 0.5) * 0.004)


@pytest.mark.parametrize(("heading", "east", "north"), [
    (0.0, 0.0, 1.0), (90.0, 1.0, 0.0), (180.0, 0.0, -1.0), (270.0, -1.0, 0.0), (45.0, math.sqrt(0.5), math.sqrt(0.5)),
])
def test_ahead_is_the_heading(heading: float, east: float, north: float) -> None:
    e, n = vehicle_to_enu(1.0, 0.0, heading)
    assert (float(e), float(n)) == pytest.approx((east, north), abs=1e-12)
    # right of the direction of travel is 90 degrees clockwise
    e, n = vehicle_to_enu(0.0, 1.0, heading)
    h = math.radians(heading + 90)
    assert (float(e), float(n)) == pytest.approx((math.sin(h), math.cos(h)), abs=1e-12)


def test_metres_east_and_north_on_the_ellipsoid() -> None:
    lon, lat = enu_to_lonlat(LON0, LAT0, 0.0, 1000.0)
    # one km north at 52 N: 1000 / 111 260 m per degree of latitude there (WGS84 meridian arc)
    assert float(lon) == pytest.approx(LON0, abs=1e-12)
    assert float(lat) - LAT0 == pytest.approx(1000 / 111_263.0, rel=2e-4)
    e, n = enu_offsets(LON0, LAT0, lon, lat)
    assert (float(e), float(n)) == pytest.approx((0.0, 1000.0), abs=1e-6)
    lon, lat = enu_to_lonlat(LON0, LAT0, np.array([3.0, -7.5]), np.array([4.0, 2.25]))
    e, n = enu_offsets(LON0, LAT0, lon, lat)
    assert np.allclose(e, [3.0, -7.5], atol=1e-7) and np.allclose(n, [4.0, 2.25], atol=1e-7)


def test_vehicle_to_pixel_inverts_pixel_to_vehicle() -> None:
    for forward in ("up", "down", "left", "right"):
        cam = Camera(1.7, 2.3, forward, 1.2, -0.4)  # type: ignore[arg-type]
        u = np.array([0, 17, 640, 1279])
        v = np.array([719, 3, 360, 100])
        a, r = pixel_to_vehicle(u, v, W, H, cam.gsd_x_mm_per_px, cam.gsd_y_mm_per_px, cam.forward,
                                cam.offset_forward_m, cam.offset_right_m)
        u2, v2 = vehicle_to_pixel(a, r, W, H, cam)
        assert np.allclose(u2, u) and np.allclose(v2, v)
        e, n = vehicle_to_enu(a, r, 123.0)
        a2, r2 = enu_to_vehicle(e, n, 123.0)
        assert np.allclose(a2, a) and np.allclose(r2, r)


def test_a_hand_worked_crack() -> None:
    """Vehicle heading east at (LON0, LAT0); camera forward = image up, image centre 1.5 m ahead.
    A crack from 1 m left to 1 m right of the image centre lies across the road, 1.5 m east of the
    antenna, from 1 m north (left of an east-bound vehicle) to 1 m south."""
    cam = Camera(2.0, 2.0, "up", 1.5, 0.0)
    left, right = centre_px(-1.0), centre_px(1.0)
    pts = geolocate_polyline([list(left), list(right)], W, H, cam, LAT0, LON0, 90.0)
    e, n = enu_offsets(LON0, LAT0, pts[:, 0], pts[:, 1])
    assert np.allclose(e, [1.5, 1.5], atol=0.002)
    assert np.allclose(n, [1.0, -1.0], atol=0.002)


def test_batch_equals_one_by_one() -> None:
    cam = Camera(1.6, 1.6, "left", 0.8, 0.3)
    lines = [[[10, 20], [300, 400], [900, 700]], [[640, 360]], [[0, 0], [1279, 719]]]
    batch = PolylineBatch()
    handles = [batch.add(line, W, H, cam, LAT0 + i * 1e-3, LON0, 10.0 * i) for i, line in enumerate(lines)]
    batch.solve()
    for i, (line, h) in enumerate(zip(lines, handles)):
        one = geolocate_polyline(line, W, H, cam, LAT0 + i * 1e-3, LON0, 10.0 * i)
        assert np.allclose(batch.result(h), one, atol=1e-12)


def _metres(track_origin: tuple[float, float], lonlat: np.ndarray) -> np.ndarray:
    e, n = enu_offsets(track_origin[0], track_origin[1], lonlat[:, 0], lonlat[:, 1])
    return np.column_stack([e, n])


def _worst_error(track: Track, cracks: list[WorldCrack], drive: Drive) -> tuple[float, int]:
    """Largest distance (m) of any geolocated crack point from the true crack it belongs to."""
    truth = {c.name: LineString(_metres(drive.origin, c.lonlat)) for c in cracks}
    worst, count = 0.0, 0
    for msg in simulate(drive, cracks):
        cam = Camera.from_payload(msg["camera"])
        p = msg["position"]
        for crack in msg["cracks"]:
            pts = _metres(drive.origin, geolocate_polyline(crack["polyline_px"], msg["frame"]["width"],
                                                           msg["frame"]["height"], cam, p["lat"], p["lon"],
                                                           p["heading_deg"]))
            # the true crack this observation is of: the nearest one
            err = min(max(line.distance(Point(x, y)) for x, y in pts) for line in truth.values())
            worst = max(worst, err)
            count += 1
    return worst, count


@pytest.mark.parametrize("forward", ["up", "right"])
@pytest.mark.parametrize("shape", ["straight", "arc"])
def test_synthetic_drive_cracks_land_where_they_are(shape: str, forward: str) -> None:
    """Known cracks along a straight and a curved (radius 40 m) track; the camera's payloads,
    geolocated back, fall on the true cracks within centimetres (pixel and 1e-7 degree rounding)."""
    track: Track = (StraightTrack(heading_deg=37.0, length_m=45.0) if shape == "straight"
                    else ArcTrack(radius_m=40.0, start_heading_deg=300.0, length_m=45.0, right_turn=True))
    cracks = [crack_on_track(f"c{i}", track, (LON0, LAT0), 4.0 + 4.5 * i, lateral, length, angle)
              for i, (lateral, length, angle) in enumerate([(0.0, 1.2, 90), (-0.4, 0.9, 0), (0.3, 1.0, 45),
                                                             (0.5, 0.7, 80), (-0.2, 1.5, 10), (0.1, 0.6, 135),
                                                             (0.0, 1.8, 90), (-0.5, 0.8, 30)])]
    drive = Drive("van-1", track, (LON0, LAT0), camera=Camera(1.6, 1.6, forward, 1.5, 0.2))  # type: ignore[arg-type]
    worst, count = _worst_error(track, cracks, drive)
    assert count >= len(cracks) * 2, "every crack should be seen in a few frames"
    assert worst < 0.05, f"geolocated points up to {worst:.3f} m off the true cracks"
