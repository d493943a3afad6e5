"""Crack type from orientation and topology: longitudinal, transverse, diagonal or alligator.

Longitudinal cracks run along the direction of travel (wheel paths, lane joints), transverse
ones across it (thermal cracking), diagonal in between. Alligator (fatigue) cracking is a
network of interconnected cracks forming cells, recognised from closed cells (holes in the
crack mask) or from many branches packed densely into the crack's bounding box.
"""

from __future__ import annotations

from enum import Enum

import cv2
import numpy as np

from edge_agent.config.measurement import ClassificationConfig, TravelAxis
from edge_agent.measure.geometry import Skeleton


class CrackType(str, Enum):
    """Distress types of ASTM D6433 that a crack mask can tell apart."""

    LONGITUDINAL = "longitudinal"
    TRANSVERSE = "transverse"
    DIAGONAL = "diagonal"
    ALLIGATOR = "alligator"


def angle_to_travel_deg(orientation_deg: float, travel_axis: TravelAxis) -> float:
    """Smallest angle in [0, 90] between a crack's axis (0 = image horizontal) and the travel axis."""
    travel = 90.0 if travel_axis == "vertical" else 0.0
    diff = abs(orientation_deg - travel) % 180.0
    return min(diff, 180.0 - diff)


def count_loops(mask_padded: np.ndarray, min_area_px: float) -> int:
    """Closed cells of a crack: holes in its (zero-bordered) mask of at least ``min_area_px``.

    Hole area is the polygon through the crack pixels around it, so a 1-px hole measures ~2.
    """
    contours, hierarchy = cv2.findContours(mask_padded.astype(np.uint8, copy=False), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return 0
    return count_holes([c for c, h in zip(contours, hierarchy[0]) if h[3] != -1], min_area_px)


def count_holes(holes: list[np.ndarray], min_area_px: float) -> int:
    """``count_loops`` from hole borders already traced (``RETR_CCOMP``, ``CHAIN_APPROX_SIMPLE``:
    the frame-wide pass that boxes the cracks traces them all at once)."""
    return sum(1 for c in holes if cv2.contourArea(c) >= min_area_px)


def count_branch_points(skel: Skeleton) -> int:
    """Junctions of the skeleton: clusters of touching pixels with three or more neighbours.

    Where branches meet, a thin skeleton often has two or three adjacent pixels of degree 3;
    they are one junction. The clusters are the connected components of the junction pixels,
    found by spreading the smallest index over the neighbour table until nothing changes (a
    cluster is a few pixels across, so a few vectorised passes).
    """
    junctions = np.flatnonzero(skel.degree() >= 3)
    if junctions.size <= 1:
        return int(junctions.size)
    rank = np.full(skel.size + 1, junctions.size, dtype=np.int64)  # last slot: what "no neighbour" reads
    rank[junctions] = np.arange(junctions.size)
    touching = rank[skel.neighbours()[junctions]]  # junction rank of each neighbour, or junctions.size
    label = np.arange(junctions.size + 1)  # the last one (no junction) is never the smallest
    while True:
        spread = np.minimum(label[:-1], label[touching].min(axis=1))
        if (spread == label[:-1]).all():
            break
        label[:-1] = spread
    return int(np.count_nonzero(label[:-1] == np.arange(junctions.size)))


def classify_crack(orientation_deg: float, travel_axis: TravelAxis, loops: int, branch_points: int,
                   density: float, config: ClassificationConfig) -> CrackType:
    """Alligator when the crack is a network (enough cells, or many branches packed densely:
    ``density`` = skeleton length / bounding-box diagonal, 1.0 for a straight line); otherwise
    by the angle between its principal axis and the travel axis."""
    if loops >= config.alligator_min_loops or (branch_points >= config.alligator_min_branches
                                               and density >= config.alligator_min_density):
        return CrackType.ALLIGATOR
    angle = angle_to_travel_deg(orientation_deg, travel_axis)
    if angle <= config.longitudinal_max_deg:
        return CrackType.LONGITUDINAL
    if angle >= config.transverse_min_deg:
        return CrackType.TRANSVERSE
    return CrackType.DIAGONAL
