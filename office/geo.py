"""Where a crack is: pixel polyline -> vehicle frame -> WGS84, exactly as /tmp/plan/payload-v2.md says.

The camera looks straight down, so a pixel is a point on the road at a fixed offset from the
image centre; the ``camera`` block of a v2 detection gives the ground sampling distance, which
image direction is ahead, and where the image centre is relative to the GPS antenna. The
position is the antenna's at the frame's capture time, with the course over ground as heading.

The last step (a metric offset east/north of the antenna -> latitude/longitude) is the direct
geodesic problem on the WGS84 ellipsoid (pyproj's ``Geod``, Karney's algorithm), so there is no
flat-earth approximation anywhere; ``enu_offsets`` is its exact inverse.

Every function is vectorised over numpy arrays: ingest geolocates all points of a whole batch
of messages with one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pyproj import Geod

Forward = Literal["up", "down", "left", "right"]
FloatArray = npt.NDArray[np.float64]
WGS84 = Geod(ellps="WGS84")

# forward -> (ahead from (du, dv), right from (du, dv)) as coefficient pairs, the table of the plan.
_AXES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "up": ((0, -1), (1, 0)),
    "down": ((0, 1), (-1, 0)),
    "left": ((-1, 0), (0, -1)),
    "right": ((1, 0), (0, 1)),
}


@dataclass(frozen=True)
class Camera:
    """The v2 ``camera`` block: how the image lies on the road relative to the GPS antenna."""

    gsd_x_mm_per_px: float
    gsd_y_mm_per_px: float
    forward: Forward
    offset_forward_m: float = 0.0
    offset_right_m: float = 0.0

    @classmethod
    def from_payload(cls, block: dict) -> Camera:
        return cls(float(block["gsd_x_mm_per_px"]), float(block["gsd_y_mm_per_px"]), block["forward"],
                   float(block.get("offset_forward_m", 0.0)), float(block.get("offset_right_m", 0.0)))

    def footprint_m(self, width_px: int, height_px: int) -> tuple[float, float]:
        """(across, along) the direction of travel, in metres: the road area one frame covers."""
        w = width_px * self.gsd_x_mm_per_px / 1000.0
        h = height_px * self.gsd_y_mm_per_px / 1000.0
        return (w, h) if self.forward in ("up", "down") else (h, w)


def pixel_to_vehicle(u: npt.ArrayLike, v: npt.ArrayLike, width: npt.ArrayLike, height: npt.ArrayLike,
                     gsd_x_mm: npt.ArrayLike, gsd_y_mm: npt.ArrayLike, forward: Forward,
                     offset_forward_m: npt.ArrayLike = 0.0, offset_right_m: npt.ArrayLike = 0.0,
                     ) -> tuple[FloatArray, FloatArray]:
    """Integer pixel coordinates (pixel centres at +0.5) -> metres (ahead of, right of) the antenna."""
    du = (np.asarray(u, dtype=np.float64) + 0.5 - np.asarray(width, dtype=np.float64) / 2.0) \
        * np.asarray(gsd_x_mm, dtype=np.float64) / 1000.0
    dv = (np.asarray(v, dtype=np.float64) + 0.5 - np.asarray(height, dtype=np.float64) / 2.0) \
        * np.asarray(gsd_y_mm, dtype=np.float64) / 1000.0
    (a_u, a_v), (r_u, r_v) = _AXES[forward]
    ahead = a_u * du + a_v * dv + np.asarray(offset_forward_m, dtype=np.float64)
    right = r_u * du + r_v * dv + np.asarray(offset_right_m, dtype=np.float64)
    return ahead, right


def vehicle_to_pixel(ahead: npt.ArrayLike, right: npt.ArrayLike, width: float, height: float,
                     camera: Camera) -> tuple[FloatArray, FloatArray]:
    """Inverse of ``pixel_to_vehicle``: metres from the antenna -> (u, v) pixel indices (not rounded)."""
    a = np.asarray(ahead, dtype=np.float64) - camera.offset_forward_m
    r = np.asarray(right, dtype=np.float64) - camera.offset_right_m
    (a_u, a_v), (r_u, r_v) = _AXES[camera.forward]
    # the 2x2 table is a signed permutation (orthogonal), so its inverse is its transpose
    du = a_u * a + r_u * r
    dv = a_v * a + r_v * r
    u = du * 1000.0 / camera.gsd_x_mm_per_px + width / 2.0 - 0.5
    v = dv * 1000.0 / camera.gsd_y_mm_per_px + height / 2.0 - 0.5
    return u, v


def vehicle_to_enu(ahead: npt.ArrayLike, right: npt.ArrayLike, heading_deg: npt.ArrayLike,
                   ) -> tuple[FloatArray, FloatArray]:
    """(ahead, right) of a vehicle heading ``heading_deg`` (clockwise from north) -> (east, north)."""
    h = np.radians(np.asarray(heading_deg, dtype=np.float64))
    a = np.asarray(ahead, dtype=np.float64)
    r = np.asarray(right, dtype=np.float64)
    return a * np.sin(h) + r * np.cos(h), a * np.cos(h) - r * np.sin(h)


def enu_to_vehicle(east: npt.ArrayLike, north: npt.ArrayLike, heading_deg: npt.ArrayLike,
                   ) -> tuple[FloatArray, FloatArray]:
    """Inverse of ``vehicle_to_enu``: its matrix [[sin h, cos h], [cos h, -sin h]] is symmetric and orthogonal
    (a reflection, determinant -1, since (ahead, right) is a left-handed frame), so it is its own inverse."""
    return vehicle_to_enu(east, north, heading_deg)


def enu_to_lonlat(lon0: npt.ArrayLike, lat0: npt.ArrayLike, east: npt.ArrayLike, north: npt.ArrayLike,
                  ) -> tuple[FloatArray, FloatArray]:
    """Points ``east``/``north`` metres from (lon0, lat0) on the WGS84 ellipsoid (geodesic direct problem)."""
    e = np.asarray(east, dtype=np.float64)
    n = np.asarray(north, dtype=np.float64)
    shape = np.broadcast(np.asarray(lon0), np.asarray(lat0), e, n).shape
    lon0b = np.broadcast_to(np.asarray(lon0, dtype=np.float64), shape).ravel()
    lat0b = np.broadcast_to(np.asarray(lat0, dtype=np.float64), shape).ravel()
    eb, nb = np.broadcast_to(e, shape).ravel(), np.broadcast_to(n, shape).ravel()
    az = np.degrees(np.arctan2(eb, nb))
    dist = np.hypot(eb, nb)
    lon, lat, _ = WGS84.fwd(lon0b, lat0b, az, dist)
    return np.asarray(lon, dtype=np.float64).reshape(shape), np.asarray(lat, dtype=np.float64).reshape(shape)


def enu_offsets(lon0: npt.ArrayLike, lat0: npt.ArrayLike, lon: npt.ArrayLike, lat: npt.ArrayLike,
                ) -> tuple[FloatArray, FloatArray]:
    """Inverse of ``enu_to_lonlat``: metres (east, north) of each point from (lon0, lat0) along the geodesic."""
    shape = np.broadcast(np.asarray(lon0), np.asarray(lat0), np.asarray(lon), np.asarray(lat)).shape

    def flat(x: npt.ArrayLike) -> FloatArray:
        return np.broadcast_to(np.asarray(x, dtype=np.float64), shape).ravel()

    az, _, dist = WGS84.inv(flat(lon0), flat(lat0), flat(lon), flat(lat))
    az_r = np.radians(np.asarray(az, dtype=np.float64))
    d = np.asarray(dist, dtype=np.float64)
    return (d * np.sin(az_r)).reshape(shape), (d * np.cos(az_r)).reshape(shape)


def geolocate_polyline(polyline_px: npt.ArrayLike, width: int, height: int, camera: Camera,
                       lat: float, lon: float, heading_deg: float) -> FloatArray:
    """One crack's pixel polyline -> an (N, 2) array of (lon, lat): the whole rule for one message."""
    pts = np.asarray(polyline_px, dtype=np.float64).reshape(-1, 2)
    ahead, right = pixel_to_vehicle(pts[:, 0], pts[:, 1], width, height, camera.gsd_x_mm_per_px,
                                    camera.gsd_y_mm_per_px, camera.forward, camera.offset_forward_m,
                                    camera.offset_right_m)
    east, north = vehicle_to_enu(ahead, right, heading_deg)
    lons, lats = enu_to_lonlat(lon, lat, east, north)
    return np.column_stack([lons, lats])


class PolylineBatch:
    """Many polylines from many messages, geolocated with one vectorised pass (ingest's hot path).

    ``add`` only records its arguments (numpy on a handful of points costs more in call overhead
    than in arithmetic); ``solve`` does the whole batch at once; then ``result(handle)`` is each
    polyline's (N, 2) array of (lon, lat).
    """

    def __init__(self) -> None:
        self._u: list[float] = []
        self._v: list[float] = []
        self._params: list[tuple[int, float, float, float, float, str, float, float, float, float, float]] = []
        self._spans: list[tuple[int, int]] = []
        self._out: FloatArray | None = None

    def add(self, polyline_px: Sequence[Sequence[int]], width: int, height: int, camera: Camera, lat: float,
            lon: float, heading_deg: float) -> int:
        start = len(self._u)
        for u, v in polyline_px:
            self._u.append(u)
            self._v.append(v)
        self._params.append((len(polyline_px), width, height, camera.gsd_x_mm_per_px, camera.gsd_y_mm_per_px,
                             camera.forward, camera.offset_forward_m, camera.offset_right_m, lat, lon, heading_deg))
        self._spans.append((start, len(self._u)))
        return len(self._spans) - 1

    def solve(self) -> None:
        if not self._u:
            self._out = np.zeros((0, 2))
            return
        counts = np.array([p[0] for p in self._params])
        per = np.array([p[1:5] + p[6:] for p in self._params], dtype=np.float64)   # w h gx gy of or lat lon hdg
        axes = np.array([[*_AXES[p[5]][0], *_AXES[p[5]][1]] for p in self._params], dtype=np.float64)
        w, h, gx, gy, off_f, off_r, lat, lon, hdg = (np.repeat(per[:, i], counts) for i in range(9))
        a_u, a_v, r_u, r_v = (np.repeat(axes[:, i], counts) for i in range(4))
        du = (np.asarray(self._u, dtype=np.float64) + 0.5 - w / 2.0) * gx / 1000.0
        dv = (np.asarray(self._v, dtype=np.float64) + 0.5 - h / 2.0) * gy / 1000.0
        ahead = a_u * du + a_v * dv + off_f
        right = r_u * du + r_v * dv + off_r
        east, north = vehicle_to_enu(ahead, right, hdg)
        lons, lats = enu_to_lonlat(lon, lat, east, north)
        self._out = np.column_stack([lons, lats])

    def result(self, handle: int) -> FloatArray:
        assert self._out is not None, "solve() first"
        a, b = self._spans[handle]
        return self._out[a:b]
