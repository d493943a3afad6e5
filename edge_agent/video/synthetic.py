"""Generated survey media: synthetic pavement with drawn cracks (and exact masks), survey clips,
and a road seen from a moving vehicle with every crack at a known place in the world.

The demo, the benchmarks and the tests need pavement video without shipping real footage
(the real data set's images may not be redistributed). Everything is deterministic by seed.
Sizes are ``(width, height)`` like OpenCV's; ``make_pavement`` takes ``h, w`` like numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

#: codecs this OpenCV build both writes and reads back (checked: mp4v in .mp4, MJPG in .avi)
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def make_pavement(h: int, w: int, seed: int = 0, n_cracks: int = 3, crack_width: int = 3
                  ) -> tuple[np.ndarray, np.ndarray]:
    """An asphalt-like BGR image with ``n_cracks`` dark polyline cracks ``crack_width`` px wide.

    Returns (bgr uint8 HxWx3, mask uint8 HxW with 255 on crack pixels and 0 elsewhere). The mask is drawn
    with the same polylines as the cracks, so it is exact.
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(95, 135)
    fine = rng.normal(0, 10, (h, w))
    coarse = cv2.GaussianBlur(rng.normal(0, 25, (h, w)), (0, 0), sigmaX=4)
    gray = base + fine + coarse
    # Aggregate: scattered light and dark stones of 1-3 px.
    n_stones = h * w // 60
    ys, xs = rng.integers(0, h, n_stones), rng.integers(0, w, n_stones)
    gray[ys, xs] += rng.choice(np.array([-35.0, 40.0]), n_stones)
    gray = np.asarray(cv2.GaussianBlur(gray, (3, 3), 0), dtype=np.float64)
    mask = np.zeros((h, w), np.uint8)
    step = max(4.0, min(h, w) / 8)
    for _ in range(n_cracks):
        pts = [np.array([rng.uniform(0, w), rng.uniform(0, h)])]
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(6, 14))):
            angle += rng.normal(0, 0.35)
            pts.append(pts[-1] + step * rng.uniform(0.5, 1.2) * np.array([np.cos(angle), np.sin(angle)]))
        poly = np.round(np.array(pts)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(mask, [poly], False, 255, thickness=crack_width, lineType=cv2.LINE_8)
    crack = mask > 0
    gray[crack] = base - rng.uniform(55, 75) + rng.normal(0, 6, int(crack.sum()))
    gray = np.clip(gray, 0, 255)
    tint = np.array([1.03, 1.0, 0.97])  # asphalt is slightly blue-grey
    bgr = np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)
    return bgr, mask


def write_image_folder(directory: str | Path, n: int, size: int | tuple[int, int] = (160, 120), seed: int = 0,
                       ext: str = ".jpg") -> list[Path]:
    """``n`` pavement images img_0000.jpg ... in ``directory`` and their masks as PNG in ``directory/masks``.

    Returns the image paths in order.
    """
    w, h = _size(size)
    directory = Path(directory)
    (directory / "masks").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img, mask = make_pavement(h, w, seed=seed * 100_003 + i, n_cracks=1 + i % 4)
        path = directory / f"img_{i:04d}{ext}"
        if not cv2.imwrite(str(path), img):
            raise OSError(f"could not write {path}")
        cv2.imwrite(str(directory / "masks" / f"img_{i:04d}.png"), mask)
        paths.append(path)
    return paths


def survey_frames(n_frames: int, size: int | tuple[int, int] = (160, 120), seed: int = 0, speed_px: int = 4
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(frame, mask) pairs of a camera driving forward over one long pavement strip: the road moves down
    the image by ``speed_px`` per frame, so a crack stays in view over several frames."""
    w, h = _size(size)
    length = h + (n_frames - 1) * speed_px
    strip, strip_mask = make_pavement(length, w, seed=seed, n_cracks=max(2, length // max(h, 1) * 2))
    for k in range(n_frames):
        top = length - h - k * speed_px
        yield strip[top:top + h], strip_mask[top:top + h]


def write_survey_video(path: str | Path, n_frames: int, size: int | tuple[int, int] = (160, 120), fps: float = 25.0,
                       seed: int = 0, speed_px: int = 4) -> Path:
    """A survey clip (see ``survey_frames``) as .mp4 (mp4v) or .avi (MJPG)."""
    path = Path(path)
    codec = VIDEO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: use one of {', '.join(VIDEO_CODECS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*codec), fps, _size(size))
    if not writer.isOpened():
        raise OSError(f"this OpenCV build cannot write {codec} to {path}")
    try:
        for frame, _ in survey_frames(n_frames, size, seed, speed_px):
            writer.write(np.ascontiguousarray(frame))
    finally:
        writer.release()
    return path


# -- a road seen from above, along a known drive -----------------------------------------------------
# The demo and the geolocation tests need a clip in which every crack's place in the world is
# known. A ``Track`` is the drive in a local east/north plane (metres); the road is a texture in
# road coordinates (s: metres along the track, d: metres to its right) painted once; a frame is
# that texture seen by a downward camera on a vehicle at a pose of the track, through exactly
# the pixel -> vehicle -> east/north rule of the v2 payload (docs/mqtt.md).

Forward = str  # "up" | "down" | "left" | "right": the image direction that points ahead
_AXES = {"up": ((0, -1), (1, 0)), "down": ((0, 1), (-1, 0)), "left": ((-1, 0), (0, -1)), "right": ((1, 0), (0, 1))}


class Track:
    """Straight and circular pieces joined without a kink, from (start_e, start_n) at ``heading_deg``
    (clockwise from north). Beyond its ends the first and last piece continue."""

    def __init__(self, heading_deg: float = 0.0, start_e: float = 0.0, start_n: float = 0.0):
        self._pieces: list[tuple[float, float, float, float, float, float, float]] = []  # s0 L e0 n0 h0 R sign
        self._end = (start_e, start_n, math.radians(heading_deg))

    @property
    def length(self) -> float:
        return sum(p[1] for p in self._pieces)

    def _add(self, length: float, radius: float, sign: float) -> Track:
        e0, n0, h0 = self._end
        self._pieces.append((self.length, float(length), e0, n0, h0, float(radius), sign))
        e, n, h = self._eval(len(self._pieces) - 1, np.array([float(length)]), np.zeros(1))
        self._end = (float(e[0]), float(n[0]), float(h[0]))
        return self

    def straight(self, length_m: float) -> Track:
        return self._add(length_m, 0.0, 0.0)

    def arc(self, length_m: float, radius_m: float, right: bool = True) -> Track:
        return self._add(length_m, radius_m, 1.0 if right else -1.0)

    def _eval(self, i: int, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(east, north, heading rad) of road point (s along piece i, d to the right)."""
        _, _, e0, n0, h0, r, sign = self._pieces[i]
        if r == 0:
            h = np.full_like(s, h0)
            e, n = e0 + s * math.sin(h0), n0 + s * math.cos(h0)
        else:
            ce, cn = e0 + sign * r * math.cos(h0), n0 - sign * r * math.sin(h0)
            h = h0 + sign * s / r
            e, n = ce - sign * r * np.cos(h), cn + sign * r * np.sin(h)
        return e + d * np.cos(h), n - d * np.sin(h), h

    def to_world(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates (metres along, metres right) -> (east, north)."""
        s, d = np.broadcast_arrays(np.asarray(s, np.float64), np.asarray(d, np.float64))
        which = np.clip(np.searchsorted([p[0] for p in self._pieces], s, side="right") - 1, 0, len(self._pieces) - 1)
        e, n = np.empty_like(s), np.empty_like(s)
        for i in range(len(self._pieces)):
            sel = which == i
            if sel.any():
                e[sel], n[sel], _ = self._eval(i, s[sel] - self._pieces[i][0], d[sel])
        return e, n

    def pose(self, s: float) -> tuple[float, float, float]:
        """(east, north, heading degrees) of the track after ``s`` metres."""
        i = int(np.clip(np.searchsorted([p[0] for p in self._pieces], s, side="right") - 1, 0, len(self._pieces) - 1))
        e, n, h = self._eval(i, np.array([s - self._pieces[i][0]]), np.zeros(1))
        return float(e[0]), float(n[0]), math.degrees(float(h[0])) % 360.0

    def from_world(self, e: np.ndarray, n: np.ndarray, near_s: float | None = None, reach_m: float = 10.0,
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(east, north) -> road coordinates, for points within a radius of the track (all of them
        within ``reach_m`` of track distance ``near_s`` when given: only the pieces there are tried)."""
        best = np.full(np.shape(e), np.inf)
        s_out, d_out = np.zeros(np.shape(e)), np.zeros(np.shape(e))
        last = len(self._pieces) - 1
        for i, (s0, length, e0, n0, h0, r, sign) in enumerate(self._pieces):
            if near_s is not None and ((i > 0 and near_s + reach_m < s0)
                                       or (i < last and near_s - reach_m > s0 + length)):
                continue
            if r == 0:
                s = (e - e0) * math.sin(h0) + (n - n0) * math.cos(h0)
                d = (e - e0) * math.cos(h0) - (n - n0) * math.sin(h0)
            else:
                ce, cn = e0 + sign * r * math.cos(h0), n0 - sign * r * math.sin(h0)
                we, wn = e - ce, n - cn
                dist = np.hypot(we, wn)
                h = np.arctan2(wn, -we) if sign > 0 else np.arctan2(-wn, we)
                turned = np.mod(sign * (h - h0), 2 * math.pi)
                turned = np.where(turned > (length / r + 2 * math.pi) / 2, turned - 2 * math.pi, turned)
                s, d = turned * r, (r - dist) if sign > 0 else (dist - r)
            outside = np.maximum(0.0 if i == 0 else -s, 0.0) + np.maximum(0.0 if i == last else s - length, 0.0)
            score = outside * 1e6 + np.abs(d)
            take = score < best
            best = np.where(take, score, best)
            s_out, d_out = np.where(take, s + s0, s_out), np.where(take, d, d_out)
        return s_out, d_out


@dataclass(frozen=True)
class RoadCrack:
    """A crack painted on the road: one or more centre lines in road coordinates (s, d metres)."""

    name: str
    kind: str  # longitudinal, transverse, diagonal, alligator
    width_mm: float
    lines: tuple[np.ndarray, ...]

    def world_lines(self, track: Track) -> list[np.ndarray]:
        """Its centre lines as (N, 2) arrays of (east, north) metres."""
        return [np.column_stack(track.to_world(line[:, 0], line[:, 1])) for line in self.lines]


def _wiggly(rng: np.random.Generator, a: tuple[float, float], b: tuple[float, float], step_m: float = 0.02,
            amp_m: float = 0.012) -> np.ndarray:
    """A crack-like line from a to b (road coordinates): a smoothed random walk across the chord."""
    pa, pb = np.array(a), np.array(b)
    n = max(6, int(np.linalg.norm(pb - pa) / step_m))
    t = np.linspace(0, 1, n)[:, None]
    across = np.array([-(pb - pa)[1], (pb - pa)[0]]) / (np.linalg.norm(pb - pa) + 1e-12)
    walk = np.cumsum(rng.normal(0, 1, n))
    walk = np.convolve(walk - np.linspace(walk[0], walk[-1], n), np.ones(5) / 5, mode="same")
    walk *= amp_m / (np.abs(walk).max() + 1e-12)
    walk += rng.normal(0, amp_m / 5, n) * (np.arange(n) % (n - 1) != 0)  # jagged, ends kept
    return pa + t * (pb - pa) + walk[:, None] * across


def road_crack(name: str, kind: str, s: float, d: float, length_m: float, width_mm: float, seed: int = 0,
               cell_m: float = 0.15) -> RoadCrack:
    """A crack centred at road coordinates (s, d): a wiggly line along (longitudinal), across
    (transverse) or at 45 degrees (diagonal), or an alligator mesh ``length_m`` square."""
    rng = np.random.default_rng(seed)
    if kind == "alligator":
        k = max(2, round(length_m / cell_m))
        g = np.stack(np.meshgrid(np.linspace(-length_m / 2, length_m / 2, k + 1),
                                 np.linspace(-length_m / 2, length_m / 2, k + 1), indexing="ij"), -1)
        g = g + rng.uniform(-0.2, 0.2, g.shape) * cell_m + np.array([s, d])
        lines = [_wiggly(rng, tuple(g[i, j]), tuple(g[i + di, j + dj]), amp_m=0.006)
                 for i in range(k + 1) for j in range(k + 1) for di, dj in ((1, 0), (0, 1))
                 if i + di <= k and j + dj <= k]
        return RoadCrack(name, kind, width_mm, tuple(lines))
    angle = {"longitudinal": 0.0, "transverse": 90.0, "diagonal": 45.0}[kind] + rng.uniform(-6, 6)
    u = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))]) * length_m / 2
    return RoadCrack(name, kind, width_mm, (_wiggly(rng, (s - u[0], d - u[1]), (s + u[0], d + u[1])),))


@dataclass
class Road:
    """The road surface along a track as one texture in road coordinates (row = s, column = d)."""

    track: Track
    cracks: list[RoadCrack]
    s_range: tuple[float, float]
    d_range: tuple[float, float] = (-1.0, 2.5)
    res_mm: float = 2.5
    marking_d: float | None = 1.6  # centre of a 12 cm lane line (None: no marking)
    dashes: tuple[float, float] | None = None  # (dash, gap) metres: a broken line; None: continuous
    marking_s: tuple[float, float] | None = None  # the stretch of road that has the line; None: all of it
    shadows: tuple[tuple[float, float, float], ...] = ()  # (s centre, width m, angle deg to the road)
    seed: int = 0
    texture: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        res = self.res_mm / 1000.0
        rows = int((self.s_range[1] - self.s_range[0]) / res)
        cols = int((self.d_range[1] - self.d_range[0]) / res)
        rng = np.random.default_rng(self.seed)
        cv2.setRNGSeed(self.seed)

        def noise(sigma: float, every: int) -> np.ndarray:  # noise of ``every``-pixel grain, bilinear
            small = np.empty((rows // every + 2, cols // every + 2), np.float32)
            cv2.randn(small, np.zeros(1), np.full(1, sigma))
            return cv2.resize(small, (cols, rows), interpolation=cv2.INTER_LINEAR if every > 1 else cv2.INTER_NEAREST)

        gray = noise(7, 1)  # grain, stones, wear, patches
        for sigma, every in ((12, 2), (14, 6), (6, 60)):
            gray += noise(sigma, every)
        gray += 100
        stones = rng.random((rows // 2 + 1, cols // 2 + 1), dtype=np.float32)
        stones = np.where(stones > 0.93, 40.0, np.where(stones < 0.05, -30.0, 0.0)).astype(np.float32)
        gray += cv2.resize(stones, (cols, rows), interpolation=cv2.INTER_NEAREST)[:rows, :cols]
        gray = cv2.GaussianBlur(gray, (3, 3), 0)
        if self.marking_d is not None:  # worn white paint with soft edges, only where it is
            c0 = max(0, int((self.marking_d - 0.1 - self.d_range[0]) / res))
            c1 = min(cols, int((self.marking_d + 0.1 - self.d_range[0]) / res) + 1)
            d_cols = (np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5) * res + self.d_range[0]
            paint = np.clip(0.5 - (np.abs(d_cols - self.marking_d) - 0.06) / 0.012, 0, 1)
            paint = paint * np.clip(0.9 + noise(0.08, 3)[:, c0:c1], 0, 1)
            s_rows = (np.arange(rows, dtype=np.float32)[:, None] + 0.5) * res + self.s_range[0]
            if self.dashes is not None:
                phase = np.mod(s_rows, self.dashes[0] + self.dashes[1])
                paint *= np.clip((self.dashes[0] - phase) / 0.01, 0, 1) * np.clip(phase / 0.01, 0, 1)
            if self.marking_s is not None:
                a, b = self.marking_s
                paint *= np.clip((s_rows - a) / 0.01, 0, 1) * np.clip((b - s_rows) / 0.01, 0, 1)
            band = gray[:, c0:c1]
            gray[:, c0:c1] = band * (1 - paint) + (165 + 0.5 * (band - 100)) * paint
        crack = np.zeros((rows, cols), np.uint8)
        for c in self.cracks:
            base = max(1.0, c.width_mm / self.res_mm)
            for line in c.lines:
                px = np.column_stack([(line[:, 1] - self.d_range[0]) / res - 0.5,
                                      (line[:, 0] - self.s_range[0]) / res - 0.5])
                pts = np.round(px * 16).astype(np.int32)
                widths = base * (1 + 0.35 * np.sin(np.cumsum(rng.normal(0, 0.5, len(pts)))))
                for a, b, w in zip(pts[:-1], pts[1:], widths):  # the width varies along a crack
                    cv2.line(crack, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 255, max(1, round(w)),
                             cv2.LINE_AA, 4)
        on = crack > 0
        core = crack[on].astype(np.float32) / 255
        gray[on] = gray[on] * (1 - core) + (35 + 0.3 * (gray[on] - 100)) * core
        for s_c, w, angle in self.shadows:  # a tree's shadow across the road, with a 35 cm penumbra
            a = math.radians(angle)
            reach = (w / 2 + 0.4 + abs(math.cos(a)) * (self.d_range[1] - self.d_range[0])) / max(0.2, abs(math.sin(a)))
            r0 = max(0, int((s_c - reach - self.s_range[0]) / res))
            r1 = min(rows, int((s_c + reach - self.s_range[0]) / res) + 1)
            s_rows = (np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5) * res + self.s_range[0]
            d_cols = (np.arange(cols, dtype=np.float32)[None, :] + 0.5) * res + self.d_range[0]
            dist = np.abs((s_rows - s_c) * math.sin(a) - d_cols * math.cos(a))
            gray[r0:r1] *= (0.55 + 0.45 * np.clip((dist - w / 2) / 0.35 + 0.5, 0, 1)).astype(np.float32)
        # asphalt is slightly blue-grey; convertScaleAbs saturates to 0..255 (values are positive)
        self.texture = cv2.merge([cv2.convertScaleAbs(gray, alpha=a) for a in (1.04, 1.0, 0.96)])

    def crack_lines_world(self) -> dict[str, list[np.ndarray]]:
        """Each crack's centre lines as (east, north) metres."""
        return {c.name: c.world_lines(self.track) for c in self.cracks}


def pixel_offsets(size: tuple[int, int], gsd_x_mm: float, gsd_y_mm: float, forward: Forward = "up",
                  offset_forward_m: float = 0.0, offset_right_m: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Metres (ahead of, right of) the GPS antenna of every pixel centre of a (width, height) frame:
    the v2 payload's rule, pixel (u, v) centred at (u + 0.5, v + 0.5)."""
    w, h = size
    du = (np.arange(w, dtype=np.float64)[None, :] + 0.5 - w / 2) * gsd_x_mm / 1000.0
    dv = (np.arange(h, dtype=np.float64)[:, None] + 0.5 - h / 2) * gsd_y_mm / 1000.0
    (a_u, a_v), (r_u, r_v) = _AXES[forward]
    return a_u * du + a_v * dv + offset_forward_m, r_u * du + r_v * dv + offset_right_m


def render_view(road: Road, pose: tuple[float, float, float], offsets: tuple[np.ndarray, np.ndarray],
                noise: float = 3.0, seed: int = 0) -> np.ndarray:
    """The frame a downward camera sees with the antenna at ``pose`` (east, north, heading deg)."""
    e0, n0, hdg = pose
    h = math.radians(hdg)
    ahead, right = offsets
    e = e0 + ahead * math.sin(h) + right * math.cos(h)
    n = n0 + ahead * math.cos(h) - right * math.sin(h)
    here, _ = road.track.from_world(np.array([e0]), np.array([n0]))
    reach = float(np.max(np.hypot(ahead, right))) + 1.0
    s, d = road.track.from_world(e, n, near_s=float(here[0]), reach_m=reach)
    res = road.res_mm / 1000.0
    map_x = ((d - road.d_range[0]) / res - 0.5).astype(np.float32)
    map_y = ((s - road.s_range[0]) / res - 0.5).astype(np.float32)
    img = cv2.remap(road.texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if noise:  # sensor noise
        grain = np.empty(img.shape, np.int16)
        cv2.setRNGSeed(seed)
        cv2.randn(grain, np.zeros(3), np.full(3, noise))  # every channel
        img = cv2.add(img, grain, dtype=cv2.CV_8U)
    return img


def write_drive_video(path: str | Path, road: Road, poses: Iterable[tuple[float, float, float]],
                      size: tuple[int, int], fps: float, gsd_mm: tuple[float, float], forward: Forward = "up",
                      offset_forward_m: float = 0.0, offset_right_m: float = 0.0) -> Path:
    """A clip of the road seen from a vehicle passing through ``poses`` (one per frame)."""
    path = Path(path)
    codec = VIDEO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: use one of {', '.join(VIDEO_CODECS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = pixel_offsets(size, gsd_mm[0], gsd_mm[1], forward, offset_forward_m, offset_right_m)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*codec), fps, size)
    if not writer.isOpened():
        raise OSError(f"this OpenCV build cannot write {codec} to {path}")
    try:
        for k, pose in enumerate(poses):
            writer.write(render_view(road, pose, offsets, seed=k))
    finally:
        writer.release()
    return path
