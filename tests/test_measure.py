"""Crack measurement on drawn cracks of known geometry (edge_agent.measure)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.config.measurement import MeasurementConfig
from edge_agent.measure import (
    CrackMeasurer,
    CrackType,
    MaskError,
    geometry,
    measure_cracks,
)

H, W = 720, 1280


def blank() -> np.ndarray:
    return np.zeros((H, W), np.uint8)


def measure_one(mask: np.ndarray, **cfg) -> object:
    cracks = measure_cracks(mask, MeasurementConfig(**cfg))
    assert len(cracks) == 1, [c.to_dict() for c in cracks]
    return cracks[0]


def drawn_width(mask: np.ndarray, x: int) -> int:
    """Width of a horizontal crack in a column: what was really drawn (cv2.line's thickness is not it)."""
    return int(np.count_nonzero(mask[:, x]))


@pytest.mark.parametrize("thickness", [1, 3, 5, 9])
def test_horizontal_line_length_and_width(thickness):
    m = blank()
    cv2.line(m, (100, 300), (700, 300), 255, thickness)
    c = measure_one(m)
    assert c.length_px == pytest.approx(600, rel=0.02)
    assert abs(c.width_mean_px - drawn_width(m, 400)) <= 1.0
    assert abs(c.width_max_px - drawn_width(m, 400)) <= 1.0
    assert c.crack_type is CrackType.TRANSVERSE  # across the default vertical travel axis
    assert c.orientation_deg in (pytest.approx(0.0, abs=0.5), pytest.approx(180.0, abs=0.5))


@pytest.mark.parametrize("end", [(600, 600), (700, 400), (250, 650)])  # 45, ~27 and ~67 degrees
def test_diagonal_line_length(end):
    m = blank()
    cv2.line(m, (100, 100), end, 255, 3)
    c = measure_one(m)
    true = math.dist((100, 100), end)
    assert c.length_px == pytest.approx(true, rel=0.02)
    angle = math.degrees(math.atan2(-(end[1] - 100), end[0] - 100)) % 180  # CCW on screen
    assert c.orientation_deg == pytest.approx(angle, abs=1.0)


def test_diagonal_line_width_within_a_pixel():
    m = blank()
    cv2.line(m, (100, 100), (600, 600), 255, 7)
    c = measure_one(m)
    # Perpendicular width of the drawn band: its area over its length (minus the round caps).
    length = math.dist((100, 100), (600, 600))
    width = np.count_nonzero(m) / length
    assert abs(c.width_mean_px - width) <= 1.0


@pytest.mark.parametrize("amplitude,wavelength,thickness", [(40, 400, 1), (60, 250, 3), (25, 120, 5)])
def test_sine_curve_matches_analytic_arc_length(amplitude, wavelength, thickness):
    x0, x1 = 100.0, 1100.0
    m = blank()
    xs = np.linspace(x0, x1, 4000)
    ys = 360 + amplitude * np.sin(2 * np.pi * (xs - x0) / wavelength)
    cv2.polylines(m, [np.round(np.stack([xs, ys], 1)).astype(np.int32).reshape(-1, 1, 2)], False, 255, thickness)
    # Arc length of y = A sin(kx): integral of sqrt(1 + (A k cos(kx))^2) dx (trapezoid on a fine grid).
    k = 2 * np.pi / wavelength
    fine = np.linspace(x0, x1, 200001)
    f = np.sqrt(1 + (amplitude * k * np.cos(k * (fine - x0))) ** 2)
    arc = float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(fine)))
    c = measure_one(m)
    assert c.length_px == pytest.approx(arc, rel=0.02)


def test_thickness_variation_mean_and_max():
    m = blank()
    cv2.rectangle(m, (100, 299), (399, 301), 255, -1)   # 3 px wide, 300 long
    cv2.rectangle(m, (400, 296), (699, 304), 255, -1)   # 9 px wide, 300 long
    c = measure_one(m)
    assert c.width_max_px == pytest.approx(9, abs=1.0)
    assert c.width_mean_px == pytest.approx(6, abs=0.75)
    assert c.length_px == pytest.approx(600, rel=0.02)


def test_grid_is_alligator():
    m = blank()
    for x in range(300, 701, 50):
        cv2.line(m, (x, 200), (x, 600), 255, 3)
    for y in range(200, 601, 50):
        cv2.line(m, (300, y), (700, y), 255, 3)
    c = measure_one(m)
    assert c.crack_type is CrackType.ALLIGATOR
    assert c.loops >= 49
    assert c.branch_points >= 4


def test_single_y_branch_is_not_alligator():
    m = blank()
    cv2.line(m, (400, 100), (400, 500), 255, 3)
    cv2.line(m, (400, 300), (550, 450), 255, 3)
    c = measure_one(m)
    assert c.crack_type is CrackType.LONGITUDINAL
    assert c.branch_points == 1
    assert c.loops == 0


def test_orientation_types_follow_the_travel_axis():
    vertical, horizontal, diagonal = blank(), blank(), blank()
    cv2.line(vertical, (400, 100), (410, 600), 255, 3)
    cv2.line(horizontal, (100, 400), (700, 380), 255, 3)
    cv2.line(diagonal, (100, 100), (500, 500), 255, 3)
    assert measure_one(vertical).crack_type is CrackType.LONGITUDINAL
    assert measure_one(horizontal).crack_type is CrackType.TRANSVERSE
    assert measure_one(diagonal).crack_type is CrackType.DIAGONAL
    # A camera mounted sideways: travel along image x.
    assert measure_one(vertical, travel_axis="horizontal").crack_type is CrackType.TRANSVERSE
    assert measure_one(horizontal, travel_axis="horizontal").crack_type is CrackType.LONGITUDINAL


def test_millimetre_conversion_with_separate_x_y_gsd():
    m = blank()
    cv2.rectangle(m, (100, 299), (399, 303), 255, -1)  # horizontal: 300 px long, 5 px wide
    c = measure_one(m, gsd_mm_per_px=1.0, gsd_y_mm_per_px=3.0)
    assert c.length_mm == pytest.approx(c.length_px * 1.0, rel=1e-6)
    assert c.length_mm == pytest.approx(300, rel=0.02)
    assert c.width_mean_mm == pytest.approx(c.width_mean_px * 3.0, rel=1e-3)  # across = image y
    assert c.area_m2 == pytest.approx(c.area_px * 3.0 / 1e6)
    assert c.length_m == pytest.approx(c.length_mm / 1000)

    v = blank()
    cv2.rectangle(v, (500, 100), (504, 399), 255, -1)  # vertical: 300 px long, 5 px wide
    c = measure_one(v, gsd_mm_per_px=1.0, gsd_y_mm_per_px=3.0)
    assert c.length_mm == pytest.approx(900, rel=0.02)
    assert c.width_mean_mm == pytest.approx(5.0, abs=1.0)


def test_gsd_scales_real_units():
    m = blank()
    cv2.line(m, (100, 300), (700, 300), 255, 5)
    c = measure_one(m, gsd_mm_per_px=2.5)
    assert c.length_mm == pytest.approx(c.length_px * 2.5)
    assert c.width_max_mm == pytest.approx(c.width_max_px * 2.5)


@pytest.mark.parametrize("dtype", [np.uint8, bool])
def test_empty_mask(dtype):
    assert CrackMeasurer().measure(np.zeros((H, W), dtype)) == []
    assert CrackMeasurer().measure(np.zeros((H, W), dtype), np.zeros((H, W), np.float32)) == []


def _broken_line(direction: tuple[int, int], gap: int) -> np.ndarray:
    """A 1-px line of 400 px along ``direction`` with ``gap`` pixels missing in the middle."""
    m = blank()
    d = np.array(direction)
    start = np.array((300, 150 if d[1] >= 0 else 570))
    pts = [start + d * i for i in range(401) if not 200 <= i < 200 + gap]
    xs, ys = np.array(pts).T
    m[ys, xs] = 255
    return m


@pytest.mark.parametrize("direction", [(1, 0), (0, 1), (1, 1), (1, -1)])
def test_gaps_up_to_gap_close_px_are_bridged_in_every_direction(direction):
    for gap in (1, 2):
        cracks = measure_cracks(_broken_line(direction, gap))
        assert len(cracks) == 1, gap
        assert cracks[0].width_max_px == pytest.approx(1.0)  # the bridge is not crack width
        assert cracks[0].length_px == pytest.approx(400 * math.hypot(*direction), rel=0.02)
    assert len(measure_cracks(_broken_line(direction, 3))) == 2
    assert len(measure_cracks(_broken_line(direction, 3), MeasurementConfig(gap_close_px=3))) == 1
    assert len(measure_cracks(_broken_line(direction, 1), MeasurementConfig(gap_close_px=0))) == 2


def test_thick_crack_with_a_gap_stays_one():
    m = blank()
    cv2.line(m, (100, 100), (400, 250), 255, 5)
    m[:, 250:252] = 0  # a 2-px cut across the crack
    cracks = measure_cracks(m)
    assert len(cracks) == 1
    assert abs(cracks[0].width_max_px - 5.5) <= 1.5


def test_min_length_and_max_cracks():
    m = blank()
    cv2.line(m, (100, 100), (700, 100), 255, 3)   # 600 px
    cv2.line(m, (100, 300), (400, 300), 255, 3)   # 300 px
    cv2.line(m, (100, 500), (130, 500), 255, 3)   # 30 px
    m[650:653, 650:653] = 255                      # a speck
    cracks = measure_cracks(m, MeasurementConfig(gsd_mm_per_px=1.0, min_length_mm=50))
    assert [round(c.length_px, -2) for c in cracks] == [600, 300]  # longest first
    cracks = measure_cracks(m, MeasurementConfig(gsd_mm_per_px=1.0, min_length_mm=10))
    assert len(cracks) == 3
    cracks = measure_cracks(m, MeasurementConfig(min_length_mm=10, max_cracks_per_frame=1))
    assert len(cracks) == 1 and cracks[0].length_px == pytest.approx(600, rel=0.02)
    # The same crack at a coarser GSD is longer in mm and survives a higher threshold.
    assert len(measure_cracks(m, MeasurementConfig(gsd_mm_per_px=5.0, min_length_mm=1000))) == 2


def test_confidence_is_mean_probability():
    m = blank()
    cv2.line(m, (100, 300), (700, 300), 255, 5)
    prob = np.where(m > 0, 0.8, 0.1).astype(np.float32)
    prob[:, 100:400][m[:, 100:400] > 0] = 0.6
    c = CrackMeasurer().measure(m > 0, prob)[0]
    assert 0.6 < c.confidence < 0.8
    c8 = CrackMeasurer().measure(m, (prob * 255).astype(np.uint8))[0]
    assert c8.confidence == pytest.approx(c.confidence, abs=0.01)
    assert CrackMeasurer().measure(m)[0].confidence is None


def test_polyline_follows_the_crack():
    m = blank()
    cv2.line(m, (100, 100), (100, 500), 255, 3)
    cv2.line(m, (100, 500), (600, 500), 255, 3)
    c = measure_one(m)
    pts = np.array(c.polyline_px)
    assert 3 <= len(pts) <= 5
    ends = {tuple(pts[0]), tuple(pts[-1])}
    assert any(math.dist(e, (100, 100)) <= 3 for e in ends) and any(math.dist(e, (600, 500)) <= 3 for e in ends)
    assert min(math.dist(p, (100, 500)) for p in pts) <= 3  # the corner is a vertex
    assert c.length_px == pytest.approx(900, rel=0.02)


def test_to_dict_is_json_and_rounded():
    m = blank()
    cv2.line(m, (100, 300), (700, 320), 255, 5)
    prob = (m / 255.0 * 0.77).astype(np.float32)
    d = CrackMeasurer(MeasurementConfig(gsd_mm_per_px=1.7)).measure(m, prob)[0].to_dict()
    back = json.loads(json.dumps(d))
    assert back == d
    assert d["type"] == "transverse" and d["severity"] in ("low", "medium", "high")
    assert d["length_mm"] == round(d["length_mm"], 1) and d["length_m"] == round(d["length_m"], 3)
    assert d["confidence"] == pytest.approx(0.77, abs=1e-3)
    assert isinstance(d["bbox_px"], list) and len(d["bbox_px"]) == 4
    assert all(isinstance(v, int) for p in d["polyline_px"] for v in p)


def test_spurs_from_a_ragged_edge_are_pruned():
    m = blank()
    cv2.line(m, (100, 300), (700, 300), 255, 9)
    for x in range(150, 700, 60):  # bumps on the crack edge
        cv2.circle(m, (x, 305), 3, 255, -1)
    c = measure_one(m)
    assert c.branch_points == 0
    assert c.length_px == pytest.approx(600, rel=0.02)


def test_bad_inputs_raise_clear_errors():
    measurer = CrackMeasurer()
    with pytest.raises(MaskError, match="HxW"):
        measurer.measure(np.zeros((H, W, 3), np.uint8))
    with pytest.raises(MaskError, match="bool or uint8"):
        measurer.measure(np.zeros((H, W), np.float32))
    with pytest.raises(MaskError, match="probability map"):
        measurer.measure(np.zeros((H, W), np.uint8), np.zeros((H // 2, W // 2), np.float32))
    with pytest.raises(MaskError, match="numpy array"):
        measurer.measure([[0, 1]])


def test_uint8_mask_with_any_nonzero_value():
    m = blank()
    cv2.line(m, (100, 300), (700, 300), 1, 3)
    a = measure_one(m)
    m[m > 0] = 255
    b = measure_one(m)
    assert a.to_dict() == b.to_dict()


def test_thinning_matches_scikit_image():
    skimage_morphology = pytest.importorskip("skimage.morphology")
    rng = np.random.default_rng(7)
    for _ in range(25):
        m = np.zeros((120, 160), np.uint8)
        for _ in range(5):
            x0, x1 = rng.integers(0, 160, 2)
            y0, y1 = rng.integers(0, 120, 2)
            cv2.line(m, (int(x0), int(y0)), (int(x1), int(y1)), 1, int(rng.integers(1, 14)))
        ours = geometry.skeletonize(m).padded[1:-1, 1:-1].astype(bool)
        assert (ours == skimage_morphology.thin(m.astype(bool))).all()


def test_skeleton_is_one_pixel_wide_and_ordered():
    m = blank()
    cv2.ellipse(m, (400, 400), (200, 100), 0, 0, 200, 255, 7)  # an arc
    skel = geometry.skeletonize(m)
    assert (skel.degree() <= 2).all()
    path = geometry.longest_path(skel)
    assert len(path) == skel.size
    assert (np.abs(np.diff(path, axis=0)).max(axis=1) == 1).all()  # consecutive pixels touch


def test_measurement_needs_neither_torch_nor_scikit_image():
    code = ("import sys, numpy as np, cv2; from edge_agent.measure import measure_cracks, CrackTracker; "
            "m = np.zeros((100, 300), np.uint8); cv2.line(m, (10, 50), (290, 50), 1, 3); "
            "assert len(measure_cracks(m)) == 1; "
            "bad = [n for n in ('torch', 'skimage', 'scipy') if n in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_is_strict():
    with pytest.raises(ValidationError, match="extra"):
        MeasurementConfig(gsd=1.0)
    with pytest.raises(ValidationError):
        MeasurementConfig(gsd_mm_per_px=0)
    with pytest.raises(ValidationError, match="image_motion"):
        MeasurementConfig(travel_axis="vertical", tracking={"image_motion": "left"})
    with pytest.raises(ValidationError, match="high_above_mm"):
        MeasurementConfig(severity={"low_below_mm": 20, "high_above_mm": 10})
    cfg = MeasurementConfig(gsd_mm_per_px=2.0, gsd_x_mm_per_px=1.5)
    assert (cfg.gsd_x, cfg.gsd_y, cfg.gsd_along_travel) == (1.5, 2.0, 2.0)
    assert MeasurementConfig(travel_axis="horizontal").image_motion == "right"
