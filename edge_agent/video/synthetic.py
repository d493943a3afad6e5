"""Generated survey media: synthetic pavement with drawn cracks (and exact masks), survey clips.

The demo, the benchmarks and the tests need pavement video without shipping real footage
(the real data set's images may not be redistributed). Everything is deterministic by seed.
Sizes are ``(width, height)`` like OpenCV's; ``make_pavement`` takes ``h, w`` like numpy.
"""

from __future__ import annotations

from collections.abc import Iterator
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
