"""Crack width along the skeleton, in pixels, summarised over a data set.

Severity follows width, so a model that paints cracks too thick (or too thin) misreports
severity even at a perfect F1@2px. This module measures a mask the way the agent measures a
crack (``edge_agent.measure.geometry``): Guo-Hall skeleton, short spurs pruned, and at every
skeleton pixel the width ``d + across`` from the distance map (exact for straight cracks of
any integer width along the image axes). The data-set statistic is the **median width over
all skeleton pixels of all images** (a long crack weighs by its length, like F1's summed
counts weigh by pixels), for predictions and labels alike, and the error is their difference.

Widths are kept in a fixed histogram (``BIN_PX`` bins up to ``MAX_PX``), so accumulating a
whole data set costs constant memory and the median is exact to half a bin.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edge_agent.measure import geometry

BIN_PX = 0.05
MAX_PX = 128.0
SPUR_MARGIN_PX = 2  # same margin as the agent's crack measurement (edge_agent/measure/cracks.py)


def mask_widths(mask: np.ndarray, prune: bool = True) -> np.ndarray:
    """Width in px at every skeleton pixel of a binary mask (all components together).

    Spurs (side branches ending free, left by thinning at ragged mask edges) up to the mask's
    typical half-width + ``SPUR_MARGIN_PX`` are pruned first, as the agent does per crack; the
    typical half-width is the 90th percentile of the distance map on the skeleton, so one fat
    blob does not license pruning real branches elsewhere in the frame.
    """
    mask = np.asarray(mask) > 0
    if not mask.any():
        return np.zeros(0, dtype=np.float32)
    skel = geometry.skeletonize(mask)
    dist = geometry.distance_map(np.pad(mask, 1).view(np.uint8))
    if prune and skel.size >= 3:
        half = float(np.percentile(dist.ravel()[skel.idx], 90))
        skel = geometry.prune_spurs(skel, math.ceil(half) + SPUR_MARGIN_PX)
    return geometry.width_profile(dist, skel)


def median_of_histogram(hist: np.ndarray) -> float | None:
    """Median of the samples in a ``BIN_PX`` histogram (bin centre), ``None`` when empty."""
    total = int(hist.sum())
    if total == 0:
        return None
    k = int(np.searchsorted(np.cumsum(hist), (total + 1) / 2.0))
    return round((k + 0.5) * BIN_PX, 4)


class WidthHistogram:
    """Accumulates per-skeleton-pixel widths of many masks."""

    def __init__(self):
        self.hist = np.zeros(int(round(MAX_PX / BIN_PX)), dtype=np.int64)

    def add_widths(self, widths: np.ndarray) -> None:
        if widths.size:
            idx = np.clip((np.asarray(widths, np.float64) / BIN_PX).astype(np.int64), 0, self.hist.size - 1)
            self.hist += np.bincount(idx, minlength=self.hist.size)

    def add(self, mask: np.ndarray) -> None:
        self.add_widths(mask_widths(mask))

    @property
    def samples(self) -> int:
        return int(self.hist.sum())

    def median(self) -> float | None:
        return median_of_histogram(self.hist)


@dataclass
class WidthScore:
    """Median crack width along the skeleton of predictions vs labels (px)."""

    pred_median_px: float | None
    label_median_px: float | None
    error_px: float | None  # pred - label; positive = the model paints cracks too thick
    pred_samples: int
    label_samples: int

    def to_dict(self) -> dict:
        return asdict(self)


class WidthAccumulator:
    """Predicted and label width histograms of a data set; ``result()`` gives the medians."""

    def __init__(self):
        self.pred = WidthHistogram()
        self.label = WidthHistogram()

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.pred.add(pred)
        self.label.add(gt)

    def result(self) -> WidthScore:
        p, g = self.pred.median(), self.label.median()
        err = round(p - g, 4) if p is not None and g is not None else None
        return WidthScore(p, g, err, self.pred.samples, self.label.samples)
