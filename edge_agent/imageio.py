"""Reading and writing the image files the CLI works on, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_agent.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(UserError, ValueError):
    pass


def list_images(path: Path) -> list[Path]:
    """One image, or every image in a folder (sorted, not recursive)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ImageReadError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    raise ImageReadError(f"{path}: no such file or folder")


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise ImageReadError(f"{path}: file not found")
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file")
    img = cv2.imdecode(data, flags)
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    return img


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise OSError(f"{path}: could not encode image")
    buf.tofile(str(path))


def overlay_mask(image_bgr: np.ndarray, mask: np.ndarray, color=(0, 0, 255), alpha: float = 0.55) -> np.ndarray:
    """The frame with crack pixels tinted (red by default) and outlined, for people to look at."""
    out = image_bgr.copy()
    m = mask.astype(bool)
    if m.any():
        tint = np.empty_like(out)
        tint[:] = color
        out[m] = cv2.addWeighted(out[m], 1 - alpha, tint[m], alpha, 0).reshape(-1, 3)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, 1)
    return out
