"""Frames of a given size made from real photographs, without resampling them.

Why: calibrating or validating a 720x1280 artifact needs 720x1280 frames, but the labeled
sets hold 360x360 and 512x512 photographs. Upscaling would widen every crack (the model
would be calibrated on cracks it never sees in the field); padding would fill most of the
frame with mirrored copies. A mosaic places whole photographs side by side at their native
scale, in a grid of cells of the photographs' own size, cropped at the frame's right and
bottom edges. Labels are placed the same way, so a mosaic is scored like any labeled frame.
Photographs of different sizes never share a mosaic; the last mosaic of a group is filled
with the group's first photographs again, so every frame is fully real.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.errors import ConvertError


@dataclass(frozen=True)
class MosaicItem:
    image: Path
    mask: Path | None = None


@dataclass
class Mosaic:
    frame: np.ndarray           # HxWx3 uint8 BGR
    mask: np.ndarray | None     # HxW bool, when the items are labeled
    sources: list[str]          # stems of the photographs, in placement order


def stable_order(paths: Sequence[Path]) -> list[Path]:
    """A pseudo-random but reproducible order (by a hash of the file stem)."""
    return sorted(paths, key=lambda p: hashlib.sha256(p.stem.encode("utf-8")).hexdigest())


def cells_per_frame(cell: tuple[int, int], size: tuple[int, int]) -> int:
    return math.ceil(size[0] / cell[0]) * math.ceil(size[1] / cell[1])


def compose(images: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Place same-size ``images`` row by row into an ``size`` canvas (cropped at the edges)."""
    h, w = images[0].shape[:2]
    rows, cols = math.ceil(size[0] / h), math.ceil(size[1] / w)
    if len(images) < rows * cols:
        raise ValueError(f"{len(images)} images cannot fill a {rows}x{cols} mosaic")
    canvas = np.zeros((size[0], size[1], *images[0].shape[2:]), dtype=images[0].dtype)
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        y, x = r * h, c * w
        ch, cw = min(h, size[0] - y), min(w, size[1] - x)
        canvas[y:y + ch, x:x + cw] = images[k][:ch, :cw]
    return canvas


def iter_mosaics(items: Sequence[MosaicItem], size: tuple[int, int], limit: int | None = None,
                 read: Callable[[MosaicItem], tuple[np.ndarray, np.ndarray | None]] | None = None
                 ) -> Iterator[Mosaic]:
    """Mosaics of ``size`` from ``items`` in their order; every item is used at least once
    (unless ``limit`` frames come first)."""
    read = read or read_item
    if not items:
        raise ConvertError("no images to build frames from")
    groups: dict[tuple[int, int], list[tuple[MosaicItem, np.ndarray, np.ndarray | None]]] = {}
    firsts: dict[tuple[int, int], list[MosaicItem]] = {}
    made = 0
    for item in items:
        img, mask = read(item)
        shape = (int(img.shape[0]), int(img.shape[1]))
        bucket = groups.setdefault(shape, [])
        bucket.append((item, img, mask))
        first = firsts.setdefault(shape, [])
        need = cells_per_frame(shape, size)
        if len(first) < need:
            first.append(item)
        if len(bucket) == need:
            yield _mosaic(bucket, size)
            groups[shape] = []
            made += 1
            if limit is not None and made >= limit:
                return
    for shape, bucket in groups.items():  # part-filled groups: complete them with their first items
        if not bucket:
            continue
        need = cells_per_frame(shape, size)
        k = 0
        while len(bucket) < need:
            item = firsts[shape][k % len(firsts[shape])]
            bucket.append((item, *read(item)))
            k += 1
        yield _mosaic(bucket, size)
        made += 1
        if limit is not None and made >= limit:
            return


def _mosaic(bucket, size) -> Mosaic:
    masks = [m for _, _, m in bucket]
    return Mosaic(frame=compose([img for _, img, _ in bucket], size),
                  mask=compose(masks, size) if all(m is not None for m in masks) else None,
                  sources=[it.image.stem for it, _, _ in bucket])


def read_item(item: MosaicItem) -> tuple[np.ndarray, np.ndarray | None]:
    from edge_agent.imageio import read_image

    img = read_image(item.image)
    if item.mask is None:
        return img, None
    from reference_model.dataset import read_mask

    mask = read_mask(item.mask)
    if mask.shape != img.shape[:2]:
        raise ConvertError(f"{item.mask}: size {mask.shape} differs from its image {img.shape[:2]}")
    return img, mask > 0
