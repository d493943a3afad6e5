"""F1 with a pixel tolerance and pixel-exact IoU, with counts summed over a data set.

Definition (shared with the CrackSeg training project so figures are comparable):
- a predicted crack pixel is a true positive when a ground-truth crack pixel lies within
  ``tolerance`` px (Euclidean distance transform); precision = TP / predicted pixels;
- a ground-truth crack pixel is recalled when a predicted crack pixel lies within
  ``tolerance`` px; recall = recalled / ground-truth pixels; F1 = harmonic mean;
- IoU = summed intersection / summed union (no tolerance).
Counts are summed over all images before dividing: large and small images weigh by pixels.

With ``ScoreAccumulator(widths=True)`` the score also carries the median crack width along
the skeleton of predictions and labels (``edge_agent.evaluation.width``): F1@2px forgives a
crack painted 3 px too thick, the severity derived from its width does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every pixel to the nearest True pixel of ``mask``."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    background = np.where(mask, 0, 255).astype(np.uint8)
    return cv2.distanceTransform(background, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


@dataclass
class PairCounts:
    pred_pixels: int
    pred_matched: int
    gt_pixels: int
    gt_recalled: int
    intersection: int
    union: int


def score_pair(pred: np.ndarray, gt: np.ndarray, tolerance: float = 2.0) -> PairCounts:
    """Counts for one image; ``pred`` and ``gt`` are boolean (or 0/255) arrays of equal shape."""
    pred = np.asarray(pred) > 0
    gt = np.asarray(gt) > 0
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    dist_to_gt = _distance_to(gt)
    dist_to_pred = _distance_to(pred)
    return PairCounts(
        pred_pixels=int(pred.sum()),
        pred_matched=int((pred & (dist_to_gt <= tolerance)).sum()),
        gt_pixels=int(gt.sum()),
        gt_recalled=int((gt & (dist_to_pred <= tolerance)).sum()),
        intersection=int((pred & gt).sum()),
        union=int((pred | gt).sum()),
    )


@dataclass
class CrackScore:
    images: int
    precision: float
    recall: float
    f1: float
    iou: float
    tolerance_px: float
    # Median width (px) along the skeleton over all images; None unless widths were measured.
    width_pred_px: float | None = None
    width_label_px: float | None = None
    width_error_px: float | None = None  # pred - label: positive = cracks painted too thick

    def to_dict(self) -> dict:
        return asdict(self)


def score_from_counts(c: PairCounts, images: int, tolerance: float) -> CrackScore:
    """Precision, recall, F1 and IoU from counts summed over ``images`` images."""
    precision = c.pred_matched / c.pred_pixels if c.pred_pixels else (1.0 if c.gt_pixels == 0 else 0.0)
    recall = c.gt_recalled / c.gt_pixels if c.gt_pixels else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    iou = c.intersection / c.union if c.union else 1.0
    return CrackScore(images, precision, recall, f1, iou, tolerance)


class ScoreAccumulator:
    """Sums per-image counts; ``result()`` gives data-set-level precision/recall/F1/IoU."""

    def __init__(self, tolerance: float = 2.0, widths: bool = False):
        self.tolerance = tolerance
        self.images = 0
        self._totals = np.zeros(6, dtype=np.int64)
        self.widths = None
        if widths:
            from edge_agent.evaluation.width import WidthAccumulator

            self.widths = WidthAccumulator()

    def add(self, pred: np.ndarray, gt: np.ndarray, width_pred: np.ndarray | None = None) -> PairCounts:
        """Score one image. ``width_pred`` (optional) is the mask widths are measured on when
        they differ from the detection mask (e.g. ``prob >= width_threshold``)."""
        counts = score_pair(pred, gt, self.tolerance)
        self.add_counts(counts)
        if self.widths is not None:
            self.widths.add(pred if width_pred is None else width_pred, gt)
        return counts

    def add_counts(self, counts: PairCounts) -> None:
        self.images += 1
        self._totals += np.array(
            [counts.pred_pixels, counts.pred_matched, counts.gt_pixels, counts.gt_recalled,
             counts.intersection, counts.union], dtype=np.int64)

    def result(self) -> CrackScore:
        score = score_from_counts(PairCounts(*(int(v) for v in self._totals)), self.images, self.tolerance)
        if self.widths is not None:
            w = self.widths.result()
            score.width_pred_px, score.width_label_px, score.width_error_px = (
                w.pred_median_px, w.label_median_px, w.error_px)
        return score
