"""A crack-dense road clip for the agent runs: generated, deterministic, with exact crack masks.

Why not the demo's survey clip: its road has a crack or two per frame, and the agent's
measurement cost grows with the cracks in view (a light road costs a tenth of a crack-dense
one at 720p). The goals are about a road *worth surveying*, so the bench drives over one.

The road is one long asphalt strip seen by a downward camera at the reference ground
resolution (1.6 mm/px): the strip moves down the image by ``speed_px`` rows per frame (289 rows
= 46 cm per frame: 50 km/h at 30 frames/s), so every frame shows mostly new road and every
crack is seen in one or two frames, as on a survey at speed. On it, per 1280x720 px of road
(1.15 m x 2.05 m; a narrower frame gets proportionally fewer):

- 3-5 **longitudinal** cracks along the travel direction, 3-8 px wide, the length of the strip;
- about 4 **transverse** cracks across the lane, 2-6 px wide;
- about 2 **wide** cracks (ravelled joints, 10-22 px wide, 300-700 px long);
- about 1.3 **alligator** (fatigue) patches: 250-400 px networks of thin 2-4 px cracks;
- about 8 hairline cracks (2 px, 80-250 px long) scattered in between.

Crack pixels are darker than the asphalt by 45-80 grey levels with soft edges; the texture is
noise at two scales plus aggregate stones. A 1280x720 frame holds about 7 % crack pixels on
average (2.5-12 % per frame). results.json records what each run's clip holds (crack pixel
fraction from the exact masks, connected crack networks per frame) and how well the model finds them
(``detection_check``: F1@2px against the masks on the first decoded frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bench import BenchError

GSD_MM_PER_PX = 1.6  # the reference camera: 1280x720 at 1.6 mm/px images 1.15 m of road per frame
CLIP_FPS = 30.0
SPEED_KMH = 50.0
#: rows the road moves per frame at SPEED_KMH and CLIP_FPS (289 at 1.6 mm/px)
SPEED_PX = round(SPEED_KMH / 3.6 / CLIP_FPS / (GSD_MM_PER_PX / 1000.0))
CHUNK_ROWS = 1024
SAMPLE_MASKS = 4


@dataclass
class Clip:
    """A generated clip, what it holds (from its exact masks), and the masks of its first frames."""

    path: Path
    frames: int
    size: list[int]
    speed_px: int
    crack_fraction_mean: float
    crack_fraction_min: float
    crack_networks_per_frame: float
    masks: list = field(default_factory=list, repr=False)  # the first SAMPLE_MASKS frames' masks

    def to_dict(self) -> dict:
        return {"file": self.path.name, "frames": self.frames, "size": self.size, "fps": CLIP_FPS,
                "speed_px_per_frame": self.speed_px, "gsd_mm_per_px": GSD_MM_PER_PX,
                "speed_kmh": round(self.speed_px * GSD_MM_PER_PX / 1000.0 * CLIP_FPS * 3.6, 1),
                "crack_fraction_mean": self.crack_fraction_mean, "crack_fraction_min": self.crack_fraction_min,
                "crack_networks_per_frame": self.crack_networks_per_frame}


def _texture(rows: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Asphalt grey levels (float32), generated in chunks so a long strip stays light on memory."""
    out = np.empty((rows, w), np.float32)
    base = rng.uniform(100, 125)
    margin = 24
    for top in range(0, rows, CHUNK_ROWS):
        h = min(CHUNK_ROWS, rows - top)
        hh = h + 2 * margin
        fine = rng.normal(0, 9, (hh, w)).astype(np.float32)
        coarse = cv2.GaussianBlur(rng.normal(0, 22, (hh, w)).astype(np.float32), (0, 0), sigmaX=5)
        g = base + fine + coarse
        n = hh * w // 50
        ys, xs = rng.integers(0, hh, n), rng.integers(0, w, n)
        g[ys, xs] += rng.choice(np.array([-38.0, 42.0], np.float32), n)
        g = cv2.GaussianBlur(g, (3, 3), 0)
        out[top:top + h] = g[margin:margin + h]
    return out


def _walk(rng: np.random.Generator, start: tuple[float, float], angle: float, length: float, step: float,
          wiggle: float) -> np.ndarray:
    """A crack's centre line: a random walk of ``length`` px from ``start`` (x, y) heading ``angle``."""
    pts = [np.asarray(start, np.float64)]
    heading = angle
    for _ in range(max(2, int(length / step))):
        heading += rng.normal(0, wiggle)
        heading = angle + float(np.clip(heading - angle, -0.6, 0.6))  # cracks keep their general direction
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    return np.round(np.array(pts)).astype(np.int32)


def _draw(mask: np.ndarray, pts: np.ndarray, w_lo: float, w_hi: float, rng: np.random.Generator) -> None:
    """Draw a polyline whose width wanders between ``w_lo`` and ``w_hi`` px along its length."""
    width = rng.uniform(w_lo, w_hi)
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        width = float(np.clip(width + rng.normal(0, 0.6), w_lo, w_hi))
        cv2.line(mask, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 255, max(1, round(width)), cv2.LINE_8)


def _alligator(mask: np.ndarray, cx: float, cy: float, size: float, rng: np.random.Generator) -> None:
    """A fatigue patch: thin cracks joining jittered grid points into a network of cells."""
    n = max(3, int(size / 70))
    xs = cx + (np.arange(n + 1) - n / 2) * size / n
    ys = cy + (np.arange(n + 1) - n / 2) * size / n
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + rng.normal(0, size / n / 5, gx.shape)
    gy = gy + rng.normal(0, size / n / 5, gy.shape)
    for i in range(n + 1):
        for j in range(n + 1):
            for di, dj in ((0, 1), (1, 0)):
                if i + di <= n and j + dj <= n and rng.random() < 0.8:
                    a = (int(gx[i, j]), int(gy[i, j]))
                    b = (int(gx[i + di, j + dj]), int(gy[i + di, j + dj]))
                    cv2.line(mask, a, b, 255, int(rng.integers(2, 5)), cv2.LINE_8)


def road_strip(rows: int, w: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 rows x w, mask uint8 0/255) of a crack-dense road ``rows`` long."""
    rng = np.random.default_rng(seed)
    gray = _texture(rows, w, rng)
    mask = np.zeros((rows, w), np.uint8)
    area = rows * w / (720.0 * 1280.0)  # counts are per 1280x720 of road, so every frame size is as dense
    for _ in range(max(1, round(rng.integers(3, 6) * w / 1280.0))):  # longitudinal: along travel, whole strip
        x0 = rng.uniform(0.1, 0.9) * w
        _draw(mask, _walk(rng, (x0, -20), math.pi / 2 + rng.normal(0, 0.05), rows + 40, 24, 0.12), 3, 8, rng)
    for _ in range(max(1, round(4 * rows / 720.0))):  # transverse: across the lane
        y0 = rng.uniform(0, rows)
        start = (-20, y0) if rng.random() < 0.5 else (w + 20, y0)
        angle = rng.normal(0, 0.08) + (0 if start[0] < 0 else math.pi)
        _draw(mask, _walk(rng, start, angle, w * rng.uniform(0.5, 1.1), 24, 0.15), 2, 6, rng)
    for _ in range(round(2 * area)):  # wide: ravelled joints
        start = (rng.uniform(0, w), rng.uniform(0, rows))
        _draw(mask, _walk(rng, start, rng.uniform(0, 2 * math.pi), rng.uniform(300, 700), 30, 0.2), 10, 22, rng)
    for _ in range(round(1.3 * area)):  # alligator patches
        _alligator(mask, rng.uniform(0.2, 0.8) * w, rng.uniform(0, rows), rng.uniform(250, 400), rng)
    for _ in range(round(8 * area)):  # hairline
        start = (rng.uniform(0, w), rng.uniform(0, rows))
        _draw(mask, _walk(rng, start, rng.uniform(0, 2 * math.pi), rng.uniform(80, 250), 16, 0.3), 2, 2, rng)
    # dark crack interiors with soft edges (the shading is blurred, the mask stays exact)
    depth = np.float32(rng.uniform(45, 80))
    shade = np.empty_like(gray)
    for top in range(0, rows, CHUNK_ROWS):
        sl = slice(max(0, top - 8), min(rows, top + CHUNK_ROWS + 8))
        blurred = cv2.GaussianBlur(mask[sl].astype(np.float32) / 255.0, (5, 5), 0)
        lo = top - sl.start
        shade[top:top + CHUNK_ROWS] = blurred[lo:lo + min(CHUNK_ROWS, rows - top)]
    gray -= depth * np.maximum(shade, (mask > 0).astype(np.float32) * 0.9)
    np.clip(gray, 0, 255, out=gray)
    bgr = np.empty((rows, w, 3), np.uint8)
    for c, tint in enumerate((1.03, 1.0, 0.97)):  # asphalt is slightly blue-grey
        bgr[..., c] = np.clip(gray * tint, 0, 255).astype(np.uint8)
    return bgr, mask


def clip_frames(n_frames: int, size: tuple[int, int], seed: int = 7, speed_px: int = SPEED_PX):
    """(frame BGR, mask) pairs at ``size`` (h, w): the camera driving forward over one strip."""
    h, w = size
    rows = h + (n_frames - 1) * speed_px
    strip, strip_mask = road_strip(rows, w, seed)
    for k in range(n_frames):
        top = rows - h - k * speed_px  # the road moves down the image: new road enters at the top
        yield strip[top:top + h], strip_mask[top:top + h]


def write_clip(path: Path, n_frames: int, size: tuple[int, int], seed: int = 7, speed_px: int = SPEED_PX) -> Clip:
    """The clip as MJPG .avi at CLIP_FPS, and what it holds (crack pixel fraction, cracks per frame)."""
    h, w = size
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), CLIP_FPS, (w, h))
    if not writer.isOpened():
        raise BenchError(f"this OpenCV build cannot write MJPG video to {path}")
    fractions, counts, masks = [], [], []
    try:
        for frame, mask in clip_frames(n_frames, size, seed, speed_px):
            writer.write(np.ascontiguousarray(frame))
            fractions.append(float(np.count_nonzero(mask)) / mask.size)
            counts.append(cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)[0] - 1)
            if len(masks) < SAMPLE_MASKS:
                masks.append(mask.copy())
    finally:
        writer.release()
    return Clip(path, n_frames, [h, w], speed_px, round(float(np.mean(fractions)), 4),
                round(float(np.min(fractions)), 4), round(float(np.mean(counts)), 1), masks)


def read_frames(path: Path, n: int) -> list[np.ndarray]:
    """The first ``n`` frames of a clip as the agent decodes them."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while len(frames) < n:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(np.ascontiguousarray(frame))
    finally:
        cap.release()
    if not frames:
        raise BenchError(f"could not read back the generated clip {path}")
    return frames


def detection_check(seg, clip: Clip, frames: list[np.ndarray]) -> dict:
    """Does the model find the clip's cracks? F1@2px and crack fractions on the first decoded frames
    (``frames``: the clip's first frames as ``read_frames`` decodes them, at least ``len(clip.masks)``)."""
    from edge_agent.evaluation.metrics import ScoreAccumulator

    frames = frames[:len(clip.masks)]
    acc = ScoreAccumulator(2.0)
    pred_fraction = []
    for frame, gt in zip(frames, clip.masks, strict=False):
        pred = seg.segment(frame)
        acc.add(pred, gt > 0)
        pred_fraction.append(float(pred.mean()))
    score = acc.result()
    return {"frames": len(pred_fraction), "f1_2px": round(score.f1, 4), "precision": round(score.precision, 4),
            "recall": round(score.recall, 4),
            "gt_crack_fraction": round(float(np.mean([np.count_nonzero(m) / m.size for m in clip.masks])), 4),
            "pred_crack_fraction": round(float(np.mean(pred_fraction)), 4)}
