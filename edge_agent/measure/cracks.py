"""From a binary crack mask to one ``CrackMeasurement`` per crack, in real units.

Runs on every frame next to inference on a small CPU, so the frame is touched only by a few
OpenCV passes (connected components, gap bridging); everything else works on each crack's own
bounding box and pixels (see ``geometry``). An empty mask costs one ``countNonZero``.

A crack is a connected component of the mask once gaps of up to ``gap_close_px`` between two
pieces are bridged, so a crack that the model broke by a gap of one or two pixels stays one
crack. The bridge is a targeted closing: only pixels within the gap distance of two different
pieces are added (a morphological closing misses oblique gaps in thin cracks and changes the
crack's outline, which the width measurement would see).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.config.measurement import MeasurementConfig
from edge_agent.errors import UserError
from edge_agent.measure import geometry
from edge_agent.measure.classify import (
    CrackType,
    classify_crack,
    count_branch_points,
    count_loops,
)
from edge_agent.measure.severity import Severity, classify_severity

SPUR_MARGIN_PX = 2  # spurs up to the crack's half-width plus this are pruned (geometry.prune_spurs)
FINE_MAX_DISTANCE = 6.0  # cracks up to ~11 px wide are thinned at full resolution
COARSE_TARGET_DISTANCE = 3.0  # wider ones on a grid where their half-width is about this many cells
COARSE_KEEP = 0.25  # a coarse cell is crack when this much of it is (keeps thin branches of wide cracks)


class MaskError(UserError, ValueError):
    """A mask or probability map that cannot be measured (wrong shape or type)."""


@dataclass(frozen=True)
class CrackMeasurement:
    """One crack in one frame. Pixel values are kept next to real units so that overlays and
    re-calibration need no second pass. ``bbox_px`` is (x, y, width, height); ``polyline_px``
    the simplified longest path through the skeleton in frame pixels; ``orientation_deg`` the
    principal axis, 0 = image horizontal, 90 = image vertical, counter-clockwise on screen."""

    bbox_px: tuple[int, int, int, int]
    length_px: float
    length_mm: float
    width_mean_px: float
    width_max_px: float
    width_mean_mm: float
    width_max_mm: float
    area_px: int
    area_m2: float
    orientation_deg: float
    crack_type: CrackType
    severity: Severity
    polyline_px: tuple[tuple[int, int], ...]
    confidence: float | None = None
    branch_points: int = 0
    loops: int = 0

    @property
    def length_m(self) -> float:
        return self.length_mm / 1000.0

    def to_dict(self) -> dict:
        """JSON-ready: floats rounded to what the measurement resolves (0.1 mm, 0.1 px, 1 mm²)."""
        return {
            "type": self.crack_type.value,
            "severity": self.severity.value,
            "length_m": round(self.length_m, 3),
            "length_mm": round(self.length_mm, 1),
            "length_px": round(self.length_px, 1),
            "width_mean_mm": round(self.width_mean_mm, 1),
            "width_max_mm": round(self.width_max_mm, 1),
            "width_mean_px": round(self.width_mean_px, 1),
            "width_max_px": round(self.width_max_px, 1),
            "area_m2": round(self.area_m2, 6),
            "area_px": int(self.area_px),
            "orientation_deg": round(self.orientation_deg, 1),
            "bbox_px": [int(v) for v in self.bbox_px],
            "polyline_px": [[int(x), int(y)] for x, y in self.polyline_px],
            "confidence": None if self.confidence is None else round(self.confidence, 3),
            "branch_points": int(self.branch_points),
            "loops": int(self.loops),
        }


def _as_mask(mask: np.ndarray) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise MaskError(f"crack mask must be a numpy array, got {type(mask).__name__}")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2 or mask.size == 0:
        raise MaskError(f"crack mask must be a non-empty HxW array, got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask.view(np.uint8)
    if mask.dtype == np.uint8:
        return (mask != 0).view(np.uint8) if mask.max(initial=0) > 1 else mask
    raise MaskError(f"crack mask must be bool or uint8, got {mask.dtype}: threshold the probability map first")


def _as_probability(prob: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if prob is None:
        return None
    if not isinstance(prob, np.ndarray) or prob.shape[:2] != shape or (prob.ndim == 3 and prob.shape[2] != 1):
        got = getattr(prob, "shape", type(prob).__name__)
        raise MaskError(f"probability map must be HxW like the mask {shape}, got {got}")
    return prob.reshape(shape)


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components with their boxes and areas.

    16-bit labels are several times faster than 32-bit ones in OpenCV's labelling with
    statistics; OpenCV refuses (instead of wrapping) when a pathological mask has more than
    65535 components, and then the 32-bit path runs.
    """
    try:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_16U)
    except cv2.error:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    return n, labels, stats


MAX_BRIDGE_WINDOWS = 256  # beyond this many close pairs (a very noisy mask) one frame-wide pass is cheaper


def _bridge_pixels(labels: np.ndarray, gap_px: int, window: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels of ``window`` (x0, y0, x1, y1, exclusive) within ``gap_px`` of two different labels.

    A max filter and a min filter over the labels differ exactly where the window sees two
    labels (background counts as 0 for the max and as +inf for the min). Outside the frame is
    background too: OpenCV's default border for a float erosion is FLT_MAX, which is finite,
    so every background pixel near the frame edge with no label around became a bridge pixel,
    and strips of them along the edge were measured as cracks of area 0.
    """
    h, w = labels.shape
    x0, y0, x1, y1 = window
    cx0, cy0, cx1, cy1 = max(x0 - gap_px, 0), max(y0 - gap_px, 0), min(x1 + gap_px, w), min(y1 + gap_px, h)
    crop = labels[cy0:cy1, cx0:cx1].astype(np.float32)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * gap_px + 1, 2 * gap_px + 1))
    high = cv2.dilate(crop, kernel)
    low = cv2.erode(np.where(crop == 0, np.float32(np.inf), crop), kernel,
                    borderType=cv2.BORDER_CONSTANT, borderValue=float("inf"))
    bridge = (high != low) & np.isfinite(low)
    return bridge[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]


def join_gaps(mask: np.ndarray, gap_px: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Components of ``mask`` (0/1 uint8) once gaps of up to ``gap_px`` pixels (chessboard
    distance, so in any direction) between two pieces are bridged: ``(n, labels, stats)``.

    Only pixels within ``gap_px`` of two different pieces are added, so the outline of a crack
    is untouched elsewhere. They can only lie where the two pieces' boxes, grown by the gap,
    overlap: only those windows are searched, and the mask is labelled a second time only when
    a bridge was found.
    """
    n, labels, stats = _components(mask)
    if gap_px <= 0 or n <= 2:
        return n, labels, stats
    h, w = mask.shape
    x0 = stats[1:, cv2.CC_STAT_LEFT] - gap_px
    y0 = stats[1:, cv2.CC_STAT_TOP] - gap_px
    x1 = stats[1:, cv2.CC_STAT_LEFT] + stats[1:, cv2.CC_STAT_WIDTH] + gap_px
    y1 = stats[1:, cv2.CC_STAT_TOP] + stats[1:, cv2.CC_STAT_HEIGHT] + gap_px
    close = ((x0[:, None] < x1[None, :]) & (x0[None, :] < x1[:, None])
             & (y0[:, None] < y1[None, :]) & (y0[None, :] < y1[:, None]))
    pairs = np.argwhere(np.triu(close, k=1))
    if not len(pairs):
        return n, labels, stats
    if len(pairs) > MAX_BRIDGE_WINDOWS:
        bridge = _bridge_pixels(labels, gap_px, (0, 0, w, h))
    else:
        bridge = np.zeros(mask.shape, dtype=bool)
        for i, j in pairs.tolist():
            win = (max(x0[i], x0[j], 0), max(y0[i], y0[j], 0), min(x1[i], x1[j], w), min(y1[i], y1[j], h))
            if win[0] < win[2] and win[1] < win[3]:
                bridge[win[1]:win[3], win[0]:win[2]] |= _bridge_pixels(labels, gap_px, win)
    if not bridge.any():
        return n, labels, stats
    return _components(mask | bridge.view(np.uint8))


class CrackMeasurer:
    """Measures every crack of a mask with one configuration (reuse it across frames)."""

    def __init__(self, config: MeasurementConfig | None = None):
        self.config = config or MeasurementConfig()

    def measure(self, mask: np.ndarray, probability: np.ndarray | None = None) -> list[CrackMeasurement]:
        """Cracks of one frame, longest first, at most ``max_cracks_per_frame``.

        ``mask``: HxW bool or uint8 (non-zero = crack) at frame resolution. ``probability``:
        the model's HxW map (float 0-1 or uint8 0-255); its mean over a crack is the
        confidence.
        """
        m = _as_mask(mask)
        prob = _as_probability(probability, m.shape)
        if not cv2.countNonZero(m):
            return []
        cfg = self.config
        n, labels, stats = join_gaps(m, cfg.gap_close_px)
        if n <= 1:
            return []
        # A skeleton has at most one step per pixel, so area x the longest step bounds the length:
        # components that cannot reach min_length_mm are dropped before any per-crack work.
        gx, gy = cfg.gsd_x, cfg.gsd_y
        areas = stats[1:, cv2.CC_STAT_AREA]
        candidates = np.flatnonzero(areas * math.hypot(gx, gy) >= cfg.min_length_mm) + 1
        candidates = candidates[np.argsort(-areas[candidates - 1], kind="stable")]
        candidates = candidates[: 2 * cfg.max_cracks_per_frame]  # bounded work on a noisy mask
        cracks = []
        for label in candidates.tolist():
            crack = self._measure_one(m, labels, stats[label], label, prob)
            if crack is not None:
                cracks.append(crack)
        cracks.sort(key=lambda c: -c.length_mm)
        return cracks[: cfg.max_cracks_per_frame]

    def _measure_one(self, mask: np.ndarray, labels: np.ndarray, stat: np.ndarray, label: int,
                     prob: np.ndarray | None) -> CrackMeasurement | None:
        cfg = self.config
        gx, gy = cfg.gsd_x, cfg.gsd_y
        x, y, w, h = (int(v) for v in stat[:4])
        component = labels[y:y + h, x:x + w] == label  # the crack with its gaps bridged
        original = mask[y:y + h, x:x + w].astype(bool) & component  # what the model marked
        # Widths and area come from the model's pixels only: a bridge is not crack width.
        dist = geometry.distance_map(np.pad(original, 1).view(np.uint8))
        factor = thinning_factor(float(dist.max()))
        if factor == 1:
            skel = geometry.skeletonize(component, offset=(x, y))
        else:  # a wide crack: its centre line at a coarser grid (thinning cost grows with width)
            coarse = cv2.resize(component.astype(np.float32), (-(-w // factor), -(-h // factor)),
                                interpolation=cv2.INTER_AREA) > COARSE_KEEP
            skel = geometry.skeletonize(coarse, offset=(x, y))
        ridge = dist if factor == 1 else cv2.dilate(dist, np.ones((factor, factor), np.uint8))
        under = self._ridge_at(ridge, skel, factor)
        if under.size and under.max() > 0:
            skel = geometry.prune_spurs(skel, math.ceil(float(under.max()) / factor) + SPUR_MARGIN_PX)
        if skel.size == 0:
            return None
        contours = geometry.skeleton_contours(skel)
        sx, sy = gx * factor, gy * factor
        length_mm = geometry.skeleton_length(skel, sx, sy, contours)
        if length_mm < cfg.min_length_mm:
            return None
        length_px = geometry.skeleton_length(skel, contours=contours) * factor if gx != gy else length_mm / gx

        points = skel.coords()
        orientation = geometry.principal_angle_deg(points, gx, gy)
        # Width is measured across the crack: the millimetres of one pixel in that direction.
        theta = math.radians(geometry.principal_angle_deg(points))
        gsd_across = math.hypot(gx * math.sin(theta), gy * math.cos(theta))
        if factor == 1:
            widths = geometry.width_profile(dist, skel)
            widths = widths[dist.ravel()[skel.idx] > 0] if widths.size else widths
        else:  # the distance tent peaks at half the width plus half a pixel
            peaks = self._ridge_at(ridge, skel, factor)
            widths = np.maximum(2.0 * peaks[peaks > 0] - 1.0, 1.0)
        width_mean_px = float(widths.mean()) if widths.size else 1.0
        width_max_px = float(widths.max()) if widths.size else 1.0

        area_px = int(np.count_nonzero(original))
        confidence = None
        if prob is not None:
            values = prob[y:y + h, x:x + w][original]
            if values.size:
                confidence = float(values.mean()) / (255.0 if prob.dtype == np.uint8 else 1.0)

        degree = skel.degree()
        branches = count_branch_points(skel, degree)
        # Thinning keeps holes, so a skeleton with a single border has none: skip the search.
        loops = 0 if len(contours) <= 1 else count_loops(
            np.pad(component, 1).view(np.uint8), cfg.classification.alligator_min_loop_area_mm2 / (gx * gy))
        density = length_mm / max(math.hypot(w * gx, h * gy), 1e-9)
        crack_type = classify_crack(orientation, cfg.travel_axis, loops, branches, density, cfg.classification)

        width_mean_mm = width_mean_px * gsd_across
        width_max_mm = width_max_px * gsd_across
        # Severity from the width as reported (0.1 mm), so a report never shows 10.0 mm as "low".
        rated = width_mean_mm if cfg.severity.width_statistic == "mean" else width_max_mm
        severity = classify_severity(round(rated, 1), cfg.severity)

        path = geometry.longest_path(skel, contours) * factor + (factor - 1) // 2 + np.array([x, y])
        polyline = geometry.simplify_polyline(path, cfg.polyline_epsilon_px)
        return CrackMeasurement(
            bbox_px=(x, y, w, h),
            length_px=length_px,
            length_mm=length_mm,
            width_mean_px=width_mean_px,
            width_max_px=width_max_px,
            width_mean_mm=width_mean_mm,
            width_max_mm=width_max_mm,
            area_px=area_px,
            area_m2=area_px * gx * gy / 1e6,
            orientation_deg=orientation,
            crack_type=crack_type,
            severity=severity,
            polyline_px=tuple((int(px), int(py)) for px, py in polyline.tolist()),
            confidence=confidence,
            branch_points=branches,
            loops=loops,
        )

    @staticmethod
    def _ridge_at(ridge: np.ndarray, skel: geometry.Skeleton, factor: int) -> np.ndarray:
        """Distance-map values (padded crop) under each skeleton pixel, mapped to full resolution."""
        if factor == 1:
            return ridge.ravel()[skel.idx]
        pts = skel.coords() * factor + (factor - 1) // 2 + 1  # +1: the distance map's zero border
        ys = np.clip(pts[:, 1], 0, ridge.shape[0] - 1)
        xs = np.clip(pts[:, 0], 0, ridge.shape[1] - 1)
        return ridge[ys, xs]


def thinning_factor(max_distance: float) -> int:
    """How coarse a crack's centre line is traced: 1 (every pixel) up to ``FINE_MAX_DISTANCE``.

    Thinning removes one layer per pass, so its cost grows with the crack's width; a crack
    wider than ~11 px is traced on a grid ``factor`` times coarser, where its half-width is a
    few cells (its length changes by well under the 2 % the tests allow; widths still come
    from the full-resolution distance map).
    """
    if max_distance <= FINE_MAX_DISTANCE:
        return 1
    return int(math.ceil(max_distance / COARSE_TARGET_DISTANCE))


def measure_cracks(mask: np.ndarray, config: MeasurementConfig | None = None,
                   probability: np.ndarray | None = None) -> list[CrackMeasurement]:
    """One-off convenience around ``CrackMeasurer(config).measure``."""
    return CrackMeasurer(config).measure(mask, probability)
