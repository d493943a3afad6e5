"""Reading and writing the image files the CLI works on, with errors that name the file."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from edge_agent.errors import UserError

DEFAULT_MAX_PIXELS = 40_000_000  # 8K UHD is 33 Mpx; no vehicle camera comes close
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


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP, GIF or WebP header without decoding; None if unknown.

    Why: decoding allocates width x height x 3 bytes before anything can be checked, and a
    909 kB PNG can declare 20000x15000 pixels (0.9 GB decoded, more in the model's floats).
    """
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM" and len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    """ImageReadError when a ``width`` x ``height`` image is over the pixel limit."""
    if width * height > max_pixels:
        raise ImageReadError(f"{what}: {width}x{height} = {width * height / 1e6:.1f} Mpx is more than the limit of "
                             f"{max_pixels / 1e6:.1f} Mpx (camera.max_pixels); resize it, or raise the limit if this "
                             "camera really delivers such frames")


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file, refusing (before decoding) one with more than ``max_pixels`` pixels."""
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise ImageReadError(f"{path}: file not found")
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file")
    size = header_size(data[:65536].tobytes())
    if size is not None:
        check_pixels(size[0], size[1], max_pixels, str(path))
    try:
        img = cv2.imdecode(data, flags)
    except (cv2.error, MemoryError) as exc:  # an unknown format's header we could not check
        raise ImageReadError(f"{path}: not a readable image ({str(exc).splitlines()[0][:120]})") from None
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (corrupt, truncated, unsupported format, or over "
                             f"{max_pixels / 1e6:.0f} Mpx)")
    check_pixels(img.shape[1], img.shape[0], max_pixels, str(path))
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


SEVERITY_COLORS = {"low": (0, 215, 255), "medium": (0, 140, 255), "high": (40, 40, 230)}  # BGR: yellow, orange, red


def annotate_cracks(image_bgr: np.ndarray, labels: list[tuple[str, tuple[int, int, int, int], str]],
                    mm_per_px: float | None = None) -> np.ndarray:
    """``image_bgr`` with a box and a label per crack, and a scale bar when the ground resolution is known.

    ``labels``: (text, bbox (x, y, w, h) in this image's pixels, severity). Labels sit above their
    box (below it at the top edge), on a dark plate so they read on any road.
    """
    out = image_bgr.copy()
    h, w = out.shape[:2]
    scale = max(0.35, min(1.0, w / 1400))
    thick = 1 if scale < 0.6 else 2
    for text, (x, y, bw, bh), severity in labels:
        color = SEVERITY_COLORS.get(severity, (255, 255, 255))
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), color, 1)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        tx = min(max(0, x), max(0, w - tw - 4))
        ty = y - 4 if y - th - base - 4 >= 0 else min(h - base - 2, y + bh + th + 4)
        cv2.rectangle(out, (tx, ty - th - 3), (tx + tw + 4, ty + base), (20, 20, 20), -1)
        cv2.putText(out, text, (tx + 2, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)
    if mm_per_px and mm_per_px > 0:
        draw_scale_bar(out, mm_per_px, scale, thick)
    return out


def draw_scale_bar(image: np.ndarray, mm_per_px: float, scale: float = 0.5, thick: int = 1) -> None:
    """A bar of a round length (about a fifth of the width) at the bottom left, labelled in mm, in place."""
    h, w = image.shape[:2]
    target = w / 5 * mm_per_px
    length_mm = next((v for v in (1000, 500, 200, 100, 50, 20, 10, 5, 2, 1) if v <= target), 1)
    px = max(1, round(length_mm / mm_per_px))
    text, font_scale = f"{length_mm} mm", max(0.4, scale)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
    x0, y0 = 10, h - 12
    cv2.rectangle(image, (x0 - 6, y0 - max(12, th) - 6), (x0 + px + tw + 14, y0 + 8), (20, 20, 20), -1)
    cv2.line(image, (x0, y0), (x0 + px, y0), (255, 255, 255), 3)
    for x in (x0, x0 + px):
        cv2.line(image, (x, y0 - 6), (x, y0 + 4), (255, 255, 255), 2)
    cv2.putText(image, text, (x0 + px + 8, y0 + 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), thick,
                cv2.LINE_AA)
