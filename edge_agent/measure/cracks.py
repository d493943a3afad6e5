"""From a binary crack mask to one ``CrackMeasurement`` per crack, in real units.

Runs on every frame next to inference on a small CPU, so the frame is touched only by a few
OpenCV passes (the cracks, their gaps bridged, come from ``components``); everything else
works on each crack's own bounding box and pixels (see ``geometry``), in work arrays that the
measurer keeps from frame to frame. An empty mask costs one ``countNonZero``.
"""

from __future__ import annotations

import math
import threading
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
    count_holes,
    count_loops,
)
from edge_agent.measure.components import Components, Scratch, join_gaps
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


class CrackMeasurer:
    """Measures every crack of a mask with one configuration (reuse it across frames: it keeps
    its frame- and crop-sized work arrays, one set per thread, from one frame to the next)."""

    def __init__(self, config: MeasurementConfig | None = None):
        self.config = config or MeasurementConfig()
        self._local = threading.local()

    def _scratch(self) -> Scratch:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = Scratch()
        return scratch

    def measure(self, mask: np.ndarray, probability: np.ndarray | None = None,
                width_threshold: float | None = None) -> list[CrackMeasurement]:
        """Cracks of one frame, longest first, at most ``max_cracks_per_frame``.

        ``mask``: HxW bool or uint8 (non-zero = crack) at frame resolution. ``probability``:
        the model's HxW map (float 0-1 or uint8 0-255); its mean over a crack is the
        confidence. ``width_threshold`` (with ``probability``): widths are read on the crack's
        pixels of at least this probability (the model's ``width_threshold``): a detection
        threshold low enough to find faint cracks paints them wider than they are. Where no
        pixel of a crack reaches it, its widths come from the mask.
        """
        m = _as_mask(mask)
        prob = _as_probability(probability, m.shape)
        width_cut = None
        if prob is not None and width_threshold is not None:
            if not 0.0 < width_threshold < 1.0:
                raise ValueError(f"width_threshold {width_threshold} must be between 0 and 1")
            width_cut = width_threshold * 255.0 if prob.dtype == np.uint8 else width_threshold
        if not cv2.countNonZero(m):
            return []
        cfg = self.config
        scratch = self._scratch()
        comps = join_gaps(m, cfg.gap_close_px, scratch)
        if comps.n <= 1:
            return []
        # A skeleton has at most one step per pixel, so area x the longest step bounds the length:
        # components that cannot reach min_length_mm are dropped before any per-crack work (and
        # those whose box has too few pixels before their pixels are even counted).
        gx, gy = cfg.gsd_x, cfg.gsd_y
        step = math.hypot(gx, gy)
        boxes = comps.stats[1:, cv2.CC_STAT_WIDTH].astype(np.int64) * comps.stats[1:, cv2.CC_STAT_HEIGHT]
        candidates = np.flatnonzero(boxes * step >= cfg.min_length_mm) + 1
        areas = comps.areas(candidates, scratch)
        keep = areas * step >= cfg.min_length_mm
        candidates = candidates[keep][np.argsort(-areas[keep], kind="stable")]
        candidates = candidates[: 2 * cfg.max_cracks_per_frame]  # bounded work on a noisy mask
        cracks = []
        for label in candidates.tolist():
            crack = self._measure_one(m, comps, label, prob, scratch, width_cut)
            if crack is not None:
                cracks.append(crack)
        cracks.sort(key=lambda c: -c.length_mm)
        return cracks[: cfg.max_cracks_per_frame]

    def _measure_one(self, mask: np.ndarray, comps: Components, label: int, prob: np.ndarray | None,
                     scratch: Scratch, width_cut: float | None = None) -> CrackMeasurement | None:
        cfg = self.config
        gx, gy = cfg.gsd_x, cfg.gsd_y
        x, y, w, h = (int(v) for v in comps.stats[label, :4])
        bridged = bool(comps.bridged[label])
        # The crack with its gaps bridged, and what the model marked (the same unless bridged),
        # each in its crop with a zero border.
        component = scratch.padded("component", (h, w), np.uint8)
        np.equal(comps.labels[y:y + h, x:x + w], label, out=component[1:-1, 1:-1].view(bool))
        original = component
        if bridged:
            original = scratch.padded("original", (h, w), np.uint8)
            np.bitwise_and(mask[y:y + h, x:x + w], component[1:-1, 1:-1], out=original[1:-1, 1:-1])
        # Widths and area come from the model's pixels only: a bridge is not crack width.
        dist = geometry.distance_map(original, scratch.get("dist", component.shape, np.float32))
        factor = thinning_factor(float(dist.max()))
        if factor == 1:
            work = scratch.get("thin", component.shape, np.uint8)
            np.copyto(work, component)
            skel = geometry.thin(work, offset=(x, y))
        else:  # a wide crack: its centre line at a coarser grid (thinning cost grows with width)
            cells = scratch.get("cells", (h, w), np.float32)
            np.copyto(cells, component[1:-1, 1:-1])
            coarse = cv2.resize(cells, (-(-w // factor), -(-h // factor)), interpolation=cv2.INTER_AREA) > COARSE_KEEP
            skel = geometry.skeletonize(coarse, offset=(x, y))
        under = self._ridge_at(dist, skel, factor)
        if under.size and under.max() > 0:
            # thinning keeps the crack one piece; the coarse grid may split it
            pruned = geometry.prune_spurs(skel, math.ceil(float(under.max()) / factor) + SPUR_MARGIN_PX,
                                          connected=factor == 1)
            if pruned is not skel:
                under = under[pruned.padded.ravel()[skel.idx] != 0]
                skel = pruned
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
        width_dist, width_under = dist, under
        if width_cut is not None and prob is not None:
            core = scratch.padded("core", (h, w), np.uint8)
            np.greater_equal(prob[y:y + h, x:x + w], width_cut, out=core[1:-1, 1:-1].view(bool))
            np.bitwise_and(core[1:-1, 1:-1], original[1:-1, 1:-1], out=core[1:-1, 1:-1])
            core_dist = geometry.distance_map(core, scratch.get("core_dist", component.shape, np.float32))
            core_under = self._ridge_at(core_dist, skel, factor)
            if core_under.size and core_under.max() > 0:
                width_dist, width_under = core_dist, core_under
        if factor == 1:
            widths = geometry.width_profile(width_dist, skel)
            widths = widths[width_under > 0] if widths.size else widths
        else:  # the distance tent peaks at half the width plus half a pixel
            widths = np.maximum(2.0 * width_under[width_under > 0] - 1.0, 1.0)
        width_mean_px = float(widths.mean()) if widths.size else 1.0
        width_max_px = float(widths.max()) if widths.size else 1.0

        inside = original[1:-1, 1:-1].view(bool)
        area_px = int(np.count_nonzero(inside)) if bridged else int(comps.stats[label, cv2.CC_STAT_AREA])
        confidence = None
        if prob is not None:
            values = prob[y:y + h, x:x + w][inside]
            if values.size:
                confidence = float(values.mean()) / (255.0 if prob.dtype == np.uint8 else 1.0)

        branches = count_branch_points(skel)
        # Thinning keeps holes, so a skeleton with a single border has none: skip the search.
        loops = 0
        if len(contours) > 1:
            min_loop_px = cfg.classification.alligator_min_loop_area_mm2 / (gx * gy)
            holes = comps.holes_of(label)
            loops = count_loops(component, min_loop_px) if holes is None else count_holes(holes, min_loop_px)
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
    def _ridge_at(dist: np.ndarray, skel: geometry.Skeleton, factor: int) -> np.ndarray:
        """Distance-map values (padded crop) under each skeleton pixel; for a coarse skeleton the
        largest over the block of full-resolution pixels its cell stands for."""
        if factor == 1:
            return dist.ravel()[skel.idx]
        pts = skel.coords() * factor + (factor - 1) // 2 + 1  # +1: the distance map's zero border
        ys = np.clip(pts[:, 1], 0, dist.shape[0] - 1)
        xs = np.clip(pts[:, 0], 0, dist.shape[1] - 1)
        return geometry.window_max(dist, ys, xs, factor)


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
