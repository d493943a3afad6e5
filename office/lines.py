"""Line geometry in metres: local frames, the centreline of many sightings, and "is this the same crack".

Merging compares lines a metre apart, so it works in metres, not degrees: each point is
projected with an azimuthal equidistant projection (pyproj) centred on the 0.5-degree cell it
lies in. Within a cell (at most ~40 km from its centre) the projection's scale error is below
2e-5, i.e. below 0.02 mm per metre compared; two lines are always compared in one frame.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import shapely
from pyproj import Transformer
from shapely import LineString

from office.geo import FloatArray

CELL_DEG = 0.5


class LocalFrame:
    """lon/lat <-> metres east/north of a cell centre."""

    def __init__(self, lon0: float, lat0: float) -> None:
        self.lon0, self.lat0 = lon0, lat0
        crs = f"+proj=aeqd +lat_0={lat0} +lon_0={lon0} +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
        self._fwd = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        self._inv = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def to_xy(self, lonlat: FloatArray) -> FloatArray:
        pts = np.asarray(lonlat, dtype=np.float64).reshape(-1, 2)
        x, y = self._fwd.transform(pts[:, 0], pts[:, 1])
        return np.column_stack([x, y])

    def to_lonlat(self, xy: FloatArray) -> FloatArray:
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        lon, lat = self._inv.transform(pts[:, 0], pts[:, 1])
        return np.column_stack([lon, lat])


@lru_cache(maxsize=512)
def _frame(cell_lon: float, cell_lat: float) -> LocalFrame:
    return LocalFrame(cell_lon, cell_lat)


def frame_for(lon: float, lat: float) -> LocalFrame:
    """The frame of the cell containing (lon, lat)."""
    return _frame((math.floor(lon / CELL_DEG) + 0.5) * CELL_DEG, (math.floor(lat / CELL_DEG) + 0.5) * CELL_DEG)


def parse_line(wkt: str | None) -> FloatArray | None:
    """WKT LINESTRING -> (N, 2) lon/lat (None for None/empty)."""
    if not wkt:
        return None
    geom = shapely.from_wkt(wkt)
    if geom is None or geom.is_empty:
        return None
    return np.asarray(shapely.get_coordinates(geom), dtype=np.float64)


def line_wkt(coords: FloatArray) -> str:
    """(N, 2) lon/lat -> WKT with 1e-8 degree resolution (about 1 mm); a single point is doubled."""
    pts = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 1:
        pts = np.vstack([pts, pts])
    return "LINESTRING(" + ",".join(f"{x:.8f} {y:.8f}" for x, y in pts) + ")"


def polyline_length(xy: FloatArray) -> float:
    """Length of a polyline in metres (points in metres; 0 for fewer than two points)."""
    return float(np.sum(np.hypot(*np.diff(xy, axis=0).T))) if len(xy) > 1 else 0.0


def densify(xy: FloatArray, step: float) -> FloatArray:
    """Points every ``step`` metres along a polyline (the vertices kept), so long straight pieces weigh
    as much as their length in a centreline."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 2:
        return pts
    return np.asarray(shapely.get_coordinates(shapely.segmentize(LineString(pts), step)), dtype=np.float64)


def principal_axis(xy: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(mean, unit vector of the direction of largest spread)."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    mean = pts.mean(axis=0)
    if len(pts) < 2:
        return mean, np.array([1.0, 0.0])
    _, _, vt = np.linalg.svd(pts - mean, full_matrices=False)
    return mean, vt[0]


def centreline(xy: FloatArray, bin_m: float) -> FloatArray:
    """One line through many sightings of a crack (points in metres): per ``bin_m`` along the
    principal axis, the median offset across it. Median, because one pass with a GNSS error
    must not drag the line; the ends are kept at the outermost points so a crack seen in
    parts (longer than the camera footprint) spans all of them."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) <= 2:
        return pts
    mean, u = principal_axis(pts)
    n = np.array([-u[1], u[0]])
    rel = pts - mean
    t, s = rel @ u, rel @ n
    t0, t1 = float(t.min()), float(t.max())
    if t1 - t0 < 1e-9:
        return np.vstack([mean, mean])
    nbins = max(1, int(math.ceil((t1 - t0) / bin_m)))
    idx = np.minimum(((t - t0) / (t1 - t0) * nbins).astype(np.int64), nbins - 1)
    order = np.lexsort((s, idx))                     # by bin, then by offset within the bin
    idx_sorted, s_sorted = idx[order], s[order]
    bins, first, counts = np.unique(idx_sorted, return_index=True, return_counts=True)
    lo = first + (counts - 1) // 2
    hi = first + counts // 2
    sc = (s_sorted[lo] + s_sorted[hi]) / 2.0          # the median of each bin
    tc = np.bincount(idx, weights=t, minlength=nbins)[bins] / counts
    tc[0], tc[-1] = t0, t1
    if len(tc) == 1:
        tc, sc = np.array([t0, t1]), np.array([sc[0], sc[0]])
    return mean + np.outer(tc, u) + np.outer(sc, n)


def axis_angle_deg(xy: FloatArray) -> float:
    """Direction of a line in [0, 180) degrees (undirected)."""
    _, u = principal_axis(xy)
    return math.degrees(math.atan2(u[1], u[0])) % 180.0


def angle_diff_deg(a: float, b: float) -> float:
    """Difference of two undirected directions, in [0, 90]."""
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def overlap_share(a: FloatArray, b: FloatArray, tolerance_m: float) -> tuple[float, float]:
    """(share of the shorter line within ``tolerance_m`` of the longer, distance between them)."""
    la, lb = LineString(a), LineString(b)
    short, long_ = (la, lb) if la.length <= lb.length else (lb, la)
    dist = float(short.distance(long_))
    if dist > tolerance_m:
        return 0.0, dist
    if short.length < 1e-6:
        return 1.0, dist
    inside = short.intersection(long_.buffer(tolerance_m, quad_segs=4)).length
    return float(inside / short.length), dist


def point_on_line(xy_line: FloatArray, x: float, y: float) -> tuple[float, float, float]:
    """(distance from the line, position along it from its start, its direction there in degrees
    clockwise from north) for the point (x, y). Positions before the start / past the end are
    negative / beyond the length (measured along the end pieces' directions). Plain numpy: this
    runs for every vehicle position against every segment near it."""
    pts = np.asarray(xy_line, dtype=np.float64)
    a, d = pts[:-1], np.diff(pts, axis=0)
    seg_len = np.hypot(d[:, 0], d[:, 1])
    ok = seg_len > 1e-12
    if not ok.any():
        return float(math.hypot(x - pts[0, 0], y - pts[0, 1])), 0.0, 0.0
    a, d, seg_len = a[ok], d[ok], seg_len[ok]
    px, py = x - a[:, 0], y - a[:, 1]
    t = np.clip((px * d[:, 0] + py * d[:, 1]) / (seg_len * seg_len), 0.0, 1.0)
    dist = np.hypot(px - t * d[:, 0], py - t * d[:, 1])
    k = int(np.argmin(dist))
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    along = float(cum[k] + t[k] * seg_len[k])
    ux, uy = d[k] / seg_len[k]
    if k == 0 and t[0] == 0.0:
        along = min(0.0, float(px[0] * ux + py[0] * uy))
    elif k == len(d) - 1 and t[k] == 1.0:
        along = float(cum[-1]) + max(0.0, float((x - pts[-1, 0]) * ux + (y - pts[-1, 1]) * uy))
    bearing = math.degrees(math.atan2(d[k, 0], d[k, 1])) % 360.0
    return float(dist[k]), along, bearing


def heading_diff_deg(a: float, b: float) -> float:
    """Difference of two directed headings, in [0, 180]."""
    return abs((a - b + 180.0) % 360.0 - 180.0)
