"""Score a folder of predictions (or of images, segmented on the fly) against ground-truth masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.evaluation.metrics import CrackScore, ScoreAccumulator
from edge_agent.evaluation.split import split_of
from edge_agent.imageio import ImageReadError, list_images, read_image


@dataclass
class FolderPairs:
    inputs: list[Path]
    masks: list[Path]


def pair_by_stem(inputs_dir: Path, masks_dir: Path, split: str = "all") -> FolderPairs:
    """Match files by stem; refuse a folder where nothing matches (a wrong folder, not a 0 score)."""
    inputs = {p.stem: p for p in list_images(inputs_dir)}
    masks = {p.stem: p for p in list_images(masks_dir)}
    stems = sorted(set(inputs) & set(masks))
    if split != "all":
        stems = [s for s in stems if split_of(s) == split]
    if not stems:
        raise ImageReadError(f"no file in {inputs_dir} has a mask with the same name in {masks_dir}"
                             + (f" (split {split})" if split != "all" else ""))
    return FolderPairs([inputs[s] for s in stems], [masks[s] for s in stems])


def looks_like_masks(path: Path) -> bool:
    """True when the file is a single-channel image holding only two values (a binary mask)."""
    img = read_image(path, cv2.IMREAD_UNCHANGED)
    return img.ndim == 2 and len(np.unique(img)) <= 2


def evaluate(pairs: FolderPairs, segmenter=None, threshold: float | None = None, tolerance: float = 2.0,
             progress=None, widths: bool = True, width_threshold: float | None = None) -> CrackScore:
    """Summed-count F1@tolerance and IoU; images are segmented with ``segmenter`` when given.

    With ``widths`` the score also holds the median crack width along the skeleton of the
    predictions and of the labels (``width_pred_px``, ``width_label_px``, ``width_error_px``).
    ``width_threshold`` measures predicted widths on ``prob >= width_threshold`` instead of the
    detection mask (needs a segmenter with ``probabilities()``).
    """
    acc = ScoreAccumulator(tolerance, widths=widths)
    items = zip(pairs.inputs, pairs.masks)
    for inp, mask_path in (progress(list(items)) if progress else items):
        gt = read_image(mask_path, cv2.IMREAD_GRAYSCALE) > 127
        width_pred = None
        if segmenter is not None and width_threshold is not None and widths:
            prob = segmenter.probabilities(read_image(inp))
            t = segmenter.threshold if threshold is None else threshold
            pred, width_pred = prob >= t, prob >= width_threshold
        elif segmenter is not None:
            pred = segmenter.segment(read_image(inp), threshold)
        else:
            pred = read_image(inp, cv2.IMREAD_GRAYSCALE) > 127
        if pred.shape != gt.shape:
            raise ImageReadError(f"{inp}: size {pred.shape[::-1]} differs from its mask {mask_path} "
                                 f"({gt.shape[::-1]})")
        acc.add(pred, gt, width_pred)
    return acc.result()
