"""Synthetic survey drives: cracks with a known place in the world -> the v2 messages a vehicle would send.

The inverse of ``office.geo``, used by the tests, the ingest benchmark and demos. A vehicle
drives a known track (straight or a circular arc) at a constant speed; for every frame the
true antenna pose gives, through the camera block, which part of each world crack is inside
the frame and at which pixels. The *reported* position is the true one plus a per-drive GNSS
bias and a per-fix jitter (real receivers drift slowly, so two passes disagree by a nearly
constant offset), and the heading gets noise, exactly what the office must cope with.

Nothing here is used by ingest: it exists so that geolocation, merging and segments can be
checked against ground truth instead of against themselves.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from shapely import LineString, box

from office.geo import Camera, FloatArray, enu_offsets, enu_to_lonlat, enu_to_vehicle, vehicle_to_pixel

CRACK_TYPES = ("longitudinal", "transverse", "diagonal", "alligator")


class Track:
    """A path in a local east/north frame (metres) around an origin; pose by distance travelled."""

    length_m: float

    def pose(self, s: float) -> tuple[float, float, float]:
        """(east, north, heading_deg clockwise from north) after ``s`` metres."""
        raise NotImplementedError


@dataclass(frozen=True)
class StraightTrack(Track):
    heading_deg: float
    length_m: float
    start_e: float = 0.0
    start_n: float = 0.0

    def pose(self, s: float) -> tuple[float, float, float]:
        h = math.radians(self.heading_deg)
        return self.start_e + s * math.sin(h), self.start_n + s * math.cos(h), self.heading_deg % 360.0


@dataclass(frozen=True)
class ArcTrack(Track):
    """A circular arc of ``radius_m`` starting at (start_e, start_n) heading ``start_heading_deg``;
    ``right_turn`` bends clockwise (seen from above)."""

    radius_m: float
    start_heading_deg: float
    length_m: float
    right_turn: bool = True
    start_e: float = 0.0
    start_n: float = 0.0

    def pose(self, s: float) -> tuple[float, float, float]:
        sign = 1.0 if self.right_turn else -1.0
        h0 = math.radians(self.start_heading_deg)
        # centre of the circle: 90 degrees to the turning side of the start heading
        ce = self.start_e + sign * self.radius_m * math.cos(h0)
        cn = self.start_n - sign * self.radius_m * math.sin(h0)
        h = h0 + sign * s / self.radius_m
        e = ce - sign * self.radius_m * math.cos(h)
        n = cn + sign * self.radius_m * math.sin(h)
        return e, n, math.degrees(h) % 360.0


@dataclass(frozen=True)
class WorldCrack:
    """One physical crack: its true line on the road as (lon, lat) points, and what the model measures."""

    name: str
    lonlat: FloatArray
    crack_type: str = "transverse"
    severity: str = "low"
    width_mean_mm: float = 4.0
    width_max_mm: float = 7.0


def crack_on_track(name: str, track: Track, origin: tuple[float, float], s: float, lateral_m: float,
                   length_m: float, angle_deg: float, *, wiggle_m: float = 0.01, crack_type: str | None = None,
                   severity: str = "low", width_mean_mm: float = 4.0, width_max_mm: float = 7.0) -> WorldCrack:
    """A straight-ish crack centred ``lateral_m`` right of the track at distance ``s``.

    ``angle_deg`` is measured from the direction of travel (0 = longitudinal, 90 = transverse);
    ``wiggle_m`` adds a small sinusoid across the crack so it is not a perfect line.
    """
    e0, n0, hdg = track.pose(s)
    h = math.radians(hdg)
    ce, cn = e0 + lateral_m * math.cos(h), n0 - lateral_m * math.sin(h)
    d = math.radians(hdg + angle_deg)
    ue, un = math.sin(d), math.cos(d)            # along the crack
    pe, pn = math.cos(d), -math.sin(d)           # across it
    t = np.linspace(-length_m / 2, length_m / 2, max(2, int(length_m / 0.05) + 1))
    w = wiggle_m * np.sin(t * 2 * math.pi / 0.6)
    east, north = ce + t * ue + w * pe, cn + t * un + w * pn
    lon, lat = enu_to_lonlat(origin[0], origin[1], east, north)
    if crack_type is None:
        a = abs(((angle_deg + 90) % 180) - 90)
        crack_type = "longitudinal" if a <= 30 else "transverse" if a >= 60 else "diagonal"
    return WorldCrack(name, np.column_stack([lon, lat]), crack_type, severity, width_mean_mm, width_max_mm)


@dataclass
class Drive:
    """One vehicle's pass over a track, with its GNSS errors and its camera."""

    device_id: str
    track: Track
    origin: tuple[float, float]
    start: datetime = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)
    speed_mps: float = 5.0
    fps: float = 10.0
    camera: Camera = field(default_factory=lambda: Camera(1.6, 1.6, "up", 1.5, 0.0))
    frame_size: tuple[int, int] = (1280, 720)
    gps_bias_m: tuple[float, float] = (0.0, 0.0)
    gps_jitter_m: float = 0.0
    heading_noise_deg: float = 0.0
    seed: int = 0
    first_seq: int = 1
    every_frame: bool = False
    schema_version: int = 2
    run_id: str | None = None
    min_visible_px: float = 20.0

    def frames(self) -> int:
        return int(self.track.length_m / self.speed_mps * self.fps) + 1


def _rounded(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _visible_part(crack_px: LineString, width: int, height: int) -> LineString | None:
    part = crack_px.intersection(box(0, 0, width - 1, height - 1))
    if part.is_empty:
        return None
    if isinstance(part, LineString):
        return part
    lines = [g for g in getattr(part, "geoms", []) if g.geom_type == "LineString"]
    return max(lines, key=lambda g: g.length) if lines else None


def simulate(drive: Drive, cracks: Sequence[WorldCrack]) -> Iterator[dict[str, Any]]:
    """The detections messages of one drive, in frame order (ready for ``json.dumps``)."""
    rng = random.Random(drive.seed)
    run_id = drive.run_id or uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    width, height = drive.frame_size
    cam = drive.camera
    counter = 0
    track_ids: dict[str, tuple[str, int]] = {}    # crack name -> (track id, last frame seen)
    seq = drive.first_seq
    # every crack in the drive's east/north frame (the geodesic offsets from the origin), once; a
    # crack's offset from the antenna is then a difference, exact to well under a millimetre over the
    # few metres that matter (the frame is azimuthal equidistant about the origin)
    local = [np.column_stack(enu_offsets(drive.origin[0], drive.origin[1], c.lonlat[:, 0], c.lonlat[:, 1]))
             for c in cracks]
    centres = np.array([xy.mean(axis=0) for xy in local]).reshape(-1, 2)
    reach = np.array([float(np.max(np.hypot(*(xy - xy.mean(axis=0)).T))) for xy in local])
    for k in range(drive.frames()):
        s = k * drive.speed_mps / drive.fps
        e, n, hdg = drive.track.pose(s)
        ant_lon, ant_lat = (float(x) for x in enu_to_lonlat(drive.origin[0], drive.origin[1], e, n))
        listed: list[dict[str, Any]] = []
        new = 0
        near = [int(i) for i in np.flatnonzero(np.hypot(centres[:, 0] - e, centres[:, 1] - n) - reach < 8.0)]
        for i in near:
            crack = cracks[i]
            ahead, right = enu_to_vehicle(local[i][:, 0] - e, local[i][:, 1] - n, hdg)
            u, v = vehicle_to_pixel(ahead, right, width, height, cam)
            part = _visible_part(LineString(np.column_stack([u, v])), width, height)
            if part is None or part.length < drive.min_visible_px:
                continue
            simple = part.simplify(1.5)
            poly = [[int(round(x)), int(round(y))] for x, y in simple.coords]
            tid, last = track_ids.get(crack.name, ("", -10))
            is_new = k - last > 2
            if is_new:
                counter += 1
                tid = f"{run_id}-{counter}"
                new += 1
            track_ids[crack.name] = (tid, k)
            xs = [p[0] for p in poly]
            ys = [p[1] for p in poly]
            length_px = float(part.length)
            gsd = (cam.gsd_x_mm_per_px + cam.gsd_y_mm_per_px) / 2
            (x0, y0), (x1, y1) = simple.coords[0], simple.coords[-1]
            listed.append({
                "track_id": tid, "first_sighting": is_new, "type": crack.crack_type, "severity": crack.severity,
                "length_m": round(length_px * gsd / 1000, 3), "length_mm": round(length_px * gsd, 1),
                "length_px": round(length_px, 1), "width_mean_mm": crack.width_mean_mm,
                "width_max_mm": crack.width_max_mm, "width_mean_px": round(crack.width_mean_mm / gsd, 1),
                "width_max_px": round(crack.width_max_mm / gsd, 1),
                "area_m2": round(length_px * gsd / 1000 * crack.width_mean_mm / 1000, 6),
                "area_px": int(length_px * crack.width_mean_mm / gsd),
                "orientation_deg": round(math.degrees(math.atan2(-(y1 - y0), x1 - x0)), 1) if (x1, y1) != (x0, y0)
                else 0.0,
                "bbox_px": [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1],
                "polyline_px": poly, "confidence": 0.9, "branch_points": 0, "loops": 0,
            })
        if not listed and not drive.every_frame:
            continue
        # what the receiver reports: the truth plus a slowly varying bias and a per-fix jitter
        je, jn = rng.gauss(0, drive.gps_jitter_m), rng.gauss(0, drive.gps_jitter_m)
        rep_lon, rep_lat = (float(x) for x in enu_to_lonlat(ant_lon, ant_lat, drive.gps_bias_m[0] + je,
                                                            drive.gps_bias_m[1] + jn))
        rep_hdg = (hdg + rng.gauss(0, drive.heading_noise_deg)) % 360.0 if drive.heading_noise_deg else hdg
        ts = drive.start + timedelta(seconds=k / drive.fps)
        msg: dict[str, Any] = {
            "schema_version": drive.schema_version, "msg_id": uuid.UUID(int=rng.getrandbits(128)).hex, "seq": seq,
            "device_id": drive.device_id, "ts": _iso(ts), "sent_ts": _iso(ts + timedelta(milliseconds=40)),
            "frame": {"index": k, "width": width, "height": height, "source": "synthetic", "position_s": k / drive.fps},
            "model": {"name": "crackseg-ref", "version": "1.0", "backend": "onnx", "precision": "int8",
                      "threshold": 0.5},
            "inference_ms": 23.4,
            "position": {"lat": _rounded(rep_lat, 7), "lon": _rounded(rep_lon, 7), "alt_m": 12.0,
                         "speed_mps": round(drive.speed_mps, 2), "heading_deg": round(rep_hdg, 1),
                         "fix_quality": "gps", "fix_mode": "3d", "satellites": 11, "fix_time": _iso(ts),
                         "age_s": 0.05, "source": "gpsd"},
            "crack_count": len(listed), "new_crack_count": new,
            "crack_pixel_fraction": round(min(1.0, sum(int(c["area_px"]) for c in listed) / (width * height)), 6),
            "cracks": listed, "cracks_omitted": 0,
        }
        if drive.schema_version >= 2:
            msg["camera"] = {"gsd_x_mm_per_px": cam.gsd_x_mm_per_px, "gsd_y_mm_per_px": cam.gsd_y_mm_per_px,
                             "forward": cam.forward, "offset_forward_m": cam.offset_forward_m,
                             "offset_right_m": cam.offset_right_m}
        seq += 1
        yield msg


def encode(msg: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as the agent sends it."""
    return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()


def cracks_along(track: Track, origin: tuple[float, float], every_m: float, *, seed: int = 0,
                 prefix: str = "c") -> list[WorldCrack]:
    """A varied set of cracks every ``every_m`` metres along a track (benchmarks, demos)."""
    rng = random.Random(seed)
    out = []
    s = every_m / 2
    i = 0
    while s < track.length_m - 1:
        kind = rng.choice(("transverse", "longitudinal", "diagonal"))
        angle = {"transverse": 90.0, "longitudinal": 0.0, "diagonal": 45.0}[kind]
        length = {"transverse": rng.uniform(0.8, 1.8), "longitudinal": rng.uniform(0.6, 3.0),
                  "diagonal": rng.uniform(0.5, 1.2)}[kind]
        sev = rng.choices(("low", "medium", "high"), weights=(6, 3, 1))[0]
        width = {"low": 4.0, "medium": 20.0, "high": 90.0}[sev]
        out.append(crack_on_track(f"{prefix}{i}", track, origin, s, rng.uniform(-0.5, 0.5), length,
                                  angle + rng.uniform(-8, 8), crack_type=kind, severity=sev,
                                  width_mean_mm=width, width_max_mm=width * 1.8))
        s += every_m
        i += 1
    return out


def fleet_messages(devices: int, length_m: float, origin: tuple[float, float], *, every_m: float = 2.0,
                   seed: int = 0, prefix: str = "crackseg") -> list[tuple[str, bytes, dict[str, Any]]]:
    """(topic, payload, message) of ``devices`` vehicles each driving its own road of ``length_m``
    (parallel, 40 m apart) with a crack every ``every_m``, reporting every frame (8 m/s, 20 fps)."""
    out = []
    for d in range(devices):
        track = StraightTrack(heading_deg=60.0, length_m=length_m, start_e=0.0, start_n=40.0 * d)
        drive = Drive(f"van-{d + 1:02d}", track, origin, seed=seed * 100 + d, gps_jitter_m=0.05,
                      heading_noise_deg=0.2, speed_mps=8.0, fps=20.0, every_frame=True)
        for msg in simulate(drive, cracks_along(track, origin, every_m, seed=seed + d, prefix=f"d{d}c")):
            out.append((f"{prefix}/{msg['device_id']}/detections", encode(msg), msg))
    return out
