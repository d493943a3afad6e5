"""F1@tolerance / IoU at many thresholds at once, from one probability map per image.

Scoring a probability map at T thresholds with ``ScoreAccumulator`` costs T pairs of distance
transforms per image. The same counts follow from histograms, because every count of the
metric (``edge_agent.evaluation.metrics``) is monotone in the threshold:

- predicted pixels at t: pixels with ``prob >= t``;
- matched predictions at t: pixels with ``prob >= t`` within ``tolerance`` of a label pixel;
- recalled label pixels at t: label pixels whose *largest* probability within ``tolerance``
  (a grey dilation with the Euclidean disk) is ``>= t``;
- intersection at t: label pixels with ``prob >= t``; union = predicted + label - intersection.

So one distance transform of the label, one dilation of the map and four histograms per image
give exactly the counts ``ScoreAccumulator`` would sum at each threshold (the tests check it
pixel for pixel). Probabilities are floored to a 1/``levels`` grid, which is exact for
thresholds on that grid (the default 1/1000 holds every 0.005 step).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge_agent.evaluation.metrics import CrackScore, PairCounts, _distance_to, score_from_counts


def disk(radius: float) -> np.ndarray:
    """Footprint of all pixel offsets at Euclidean distance <= radius."""
    r = int(math.floor(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx <= radius * radius + 1e-9).astype(np.uint8)


class ThresholdSweep:
    """Summed counts of the F1@tolerance / IoU metric at every threshold of ``thresholds``."""

    def __init__(self, thresholds, tolerance: float = 2.0, levels: int = 1000):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.tolerance = tolerance
        self.levels = levels
        self.kernel = disk(tolerance)
        self.images = 0
        self._t_idx = np.clip(np.round(self.thresholds * levels).astype(np.int64), 0, levels + 1)
        # per-bin histograms: predicted, matched, recalled, intersection; plus label pixel total
        self._hist = np.zeros((4, levels + 2), dtype=np.int64)
        self._gt_pixels = 0

    def _bins(self, prob: np.ndarray) -> np.ndarray:
        return np.clip(np.floor(prob.astype(np.float64) * self.levels), 0, self.levels).astype(np.int64)

    def add(self, prob: np.ndarray, gt: np.ndarray) -> None:
        """One image: ``prob`` float map in [0, 1], ``gt`` binary label of the same shape."""
        prob = np.asarray(prob, dtype=np.float32)
        gt = np.asarray(gt) > 0
        if prob.shape != gt.shape:
            raise ValueError(f"probability shape {prob.shape} differs from label shape {gt.shape}")
        n = self.levels + 2
        bins = self._bins(prob)
        near_gt = _distance_to(gt) <= self.tolerance
        dil = cv2.dilate(prob, self.kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0.0)
        self._hist[0] += np.bincount(bins.ravel(), minlength=n)
        self._hist[1] += np.bincount(bins[near_gt], minlength=n)
        self._hist[2] += np.bincount(self._bins(dil)[gt], minlength=n)
        self._hist[3] += np.bincount(bins[gt], minlength=n)
        self._gt_pixels += int(gt.sum())
        self.images += 1

    def counts(self, i: int) -> PairCounts:
        """Summed counts at ``thresholds[i]``."""
        above = self._hist[:, self._t_idx[i]:].sum(axis=1)
        pred, matched, recalled, inter = (int(v) for v in above)
        return PairCounts(pred, matched, self._gt_pixels, recalled, inter, pred + self._gt_pixels - inter)

    def result(self, i: int) -> CrackScore:
        return score_from_counts(self.counts(i), self.images, self.tolerance)

    def results(self) -> list[CrackScore]:
        return [self.result(i) for i in range(len(self.thresholds))]
