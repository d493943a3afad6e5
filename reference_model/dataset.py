"""Labeled crack folders, the deterministic split, and augmentation for other cameras.

A labeled folder holds ``images/<stem>.<jpg|png|...>`` and ``masks/<stem>.png`` (0 = background,
>0 = crack). The split is a hash of the stem, so it never changes when files are added,
renamed elsewhere, or listed in another order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.evaluation.split import split_of
from edge_agent.imageio import IMAGE_SUFFIXES

__all__ = ["Augmenter", "IMAGE_SUFFIXES", "Sample", "cap_label_width", "list_pairs", "read_mask", "read_rgb",
           "resize_label", "select_split", "split_of"]


@dataclass
class Sample:
    stem: str
    image_path: Path
    mask_path: Path


def list_pairs(root: str | Path) -> list[Sample]:
    """Image/mask pairs under ``root`` (``images/`` + ``masks/``), sorted by stem."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise FileNotFoundError(f"{root}: expected 'images/' and 'masks/' folders inside")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = [Sample(p.stem, p, masks[p.stem]) for p in sorted(images_dir.iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in masks]
    if not pairs:
        raise FileNotFoundError(f"{root}: no image with a mask of the same stem")
    return pairs


def select_split(samples: list[Sample], split: str, val_fraction: float = 0.15) -> list[Sample]:
    if split == "all":
        return list(samples)
    return [s for s in samples if split_of(s.stem, val_fraction) == split]


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"cannot read mask {path}")
    return (mask > 127).astype(np.uint8)


def cap_label_width(mask: np.ndarray, max_half_width: float = 3.0,
                    with_skeleton: bool = False) -> tuple[np.ndarray, ...]:
    """Split a crack mask into a thin core target and an 'ignore' band.

    Some data sets draw cracks far wider than the visible dark line (the unified set has
    8.6 % crack pixels and a median label width of 17-19 px along the skeleton, against 5-6 px
    for the careful crackseg-sut labels). Training on those wide labels makes the model paint
    thick cracks. The core is every label pixel within ``max_half_width`` of the label's
    skeleton; the rest of the label is neither crack nor background for the loss.
    ``max_half_width <= 0`` keeps the whole label as the target (for careful labels, whose
    width is the truth). With ``with_skeleton`` the label skeleton is returned third (used to
    keep thin cracks connected when a sample is shrunk).
    """
    from skimage.morphology import skeletonize  # training-only dependency

    mask = (np.asarray(mask) > 0)
    if not mask.any():
        empty = np.zeros(mask.shape, dtype=np.uint8)
        return (empty, empty.copy(), empty.copy()) if with_skeleton else (empty, empty.copy())
    skeleton = skeletonize(mask)
    if max_half_width > 0:
        dist = cv2.distanceTransform(np.where(skeleton, 0, 255).astype(np.uint8), cv2.DIST_L2, 5)
        core = mask & (dist <= max_half_width)
    else:
        core = mask
    band = mask & ~core
    out = (core.astype(np.uint8), band.astype(np.uint8))
    return out + (skeleton.astype(np.uint8),) if with_skeleton else out


def resize_label(mask: np.ndarray, size: tuple[int, int], scale: float,
                 skeleton: np.ndarray | None = None) -> np.ndarray:
    """Resample a 0/1 label to ``size`` (w, h) so it still draws the same crack at ``scale``.

    Area-resample when shrinking, bilinear when enlarging, threshold 0.5 (the width scales by
    ``scale``); when shrinking, the label skeleton's coverage is added so a crack thinner than
    one pixel at the new scale stays a connected 1-px line. Same rule as
    ``reference_model.scale_eval.resample_mask``.
    """
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.resize(mask.astype(np.float32), size, interpolation=interp) >= 0.5
    if scale < 1 and skeleton is not None and skeleton.any():
        out |= cv2.resize(skeleton.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    return out


class Augmenter:
    """Geometric and photometric augmentation that imitates other cameras and roads.

    Scale changes imitate other resolutions and mounting heights (and thin the cracks);
    colour, gamma, blur, noise, JPEG and shadow changes imitate other sensors, light and
    compression. Geometry is applied to image, target and ignore band alike.
    """

    def __init__(self, crop: int = 256, scale_range: tuple[float, float] = (0.55, 1.5), seed: int = 0):
        self.crop = crop
        self.scale_range = scale_range
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, target: np.ndarray, band: np.ndarray,
                 skeleton: np.ndarray | None = None):
        """Scale (log-uniform in ``scale_range``), crop, flip/rotate, photometric changes.

        ``skeleton`` (the target's skeleton) keeps thin cracks connected when shrinking.
        """
        rng = self.rng
        scale = math.exp(rng.uniform(math.log(self.scale_range[0]), math.log(self.scale_range[1])))
        h, w = image.shape[:2]
        nh, nw = max(8, int(round(h * scale))), max(8, int(round(w * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
        target = resize_label(target, (nw, nh), scale, skeleton)
        band = resize_label(band, (nw, nh), scale) & ~target
        target, band = target.astype(np.uint8), band.astype(np.uint8)
        image, target, band = self._random_crop(image, target, band)
        if rng.random() < 0.5:
            image, target, band = image[:, ::-1], target[:, ::-1], band[:, ::-1]
        if rng.random() < 0.5:
            image, target, band = image[::-1], target[::-1], band[::-1]
        k = int(rng.integers(4))
        image, target, band = np.rot90(image, k), np.rot90(target, k), np.rot90(band, k)
        image = self._photometric(np.ascontiguousarray(image))
        return image, np.ascontiguousarray(target), np.ascontiguousarray(band)

    def _random_crop(self, image, target, band):
        c = self.crop
        h, w = image.shape[:2]
        if h < c or w < c:
            ph, pw = max(0, c - h), max(0, c - w)
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
            target = cv2.copyMakeBorder(target, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
            band = cv2.copyMakeBorder(band, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
            h, w = image.shape[:2]
        # Prefer crops that contain crack pixels (most of a frame is background).
        best = None
        for _ in range(3):
            y, x = int(self.rng.integers(0, h - c + 1)), int(self.rng.integers(0, w - c + 1))
            best = (y, x)
            if target[y:y + c, x:x + c].any():
                break
        y, x = best
        return image[y:y + c, x:x + c], target[y:y + c, x:x + c], band[y:y + c, x:x + c]

    def _photometric(self, image: np.ndarray) -> np.ndarray:
        rng = self.rng
        img = image.astype(np.float32)
        if rng.random() < 0.2:  # grey-scale cameras / strongly desaturated roads
            g = img.mean(axis=2, keepdims=True)
            img = np.repeat(g, 3, axis=2)
        else:  # white balance and saturation
            img *= rng.uniform(0.85, 1.15, size=3).astype(np.float32)
            mean = img.mean(axis=2, keepdims=True)
            img = mean + (img - mean) * rng.uniform(0.6, 1.4)
        # brightness / contrast / gamma
        img = (img - img.mean()) * rng.uniform(0.6, 1.4) + img.mean() + rng.uniform(-35, 35)
        img = np.clip(img, 0, 255)
        gamma = math.exp(rng.uniform(-0.4, 0.4))
        img = 255.0 * (img / 255.0) ** gamma
        if rng.random() < 0.3:  # cast shadow: a soft dark half-plane
            h, w = img.shape[:2]
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            a = rng.uniform(0, 2 * math.pi)
            d = (xx - w / 2) * math.cos(a) + (yy - h / 2) * math.sin(a) - rng.uniform(-w / 3, w / 3)
            soft = 1.0 / (1.0 + np.exp(-d / rng.uniform(2, 25)))
            img *= (1.0 - rng.uniform(0.3, 0.65) * soft)[..., None]
        if rng.random() < 0.3:
            sigma = rng.uniform(0.3, 1.2)
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        if rng.random() < 0.3:
            img += rng.normal(0, rng.uniform(2, 10), size=img.shape).astype(np.float32)
        img = np.clip(img, 0, 255).astype(np.uint8)
        if rng.random() < 0.3:
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 90))])
            if ok:
                img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        return img
