"""The crack-width metric (median width along the skeleton) on drawn cracks of known width,
its place on the score object, and the many-threshold sweep against the plain metric."""

import cv2
import numpy as np
import pytest

from edge_agent.evaluation.folder import FolderPairs, evaluate
from edge_agent.evaluation.metrics import CrackScore, ScoreAccumulator
from edge_agent.evaluation.sweep import ThresholdSweep, disk
from edge_agent.evaluation.width import WidthAccumulator, WidthHistogram, mask_widths


def band(width: int, h: int = 80, w: int = 120, vertical: bool = False) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    top = h // 2 - width // 2
    m[top:top + width, 10:w - 10] = 1
    return np.ascontiguousarray(m.T) if vertical else m


def drawn_line(width: int, angle_deg: float, size: int = 160) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    c = size / 2
    dx, dy = np.cos(np.radians(angle_deg)) * 60, np.sin(np.radians(angle_deg)) * 60
    cv2.line(m, (int(c - dx), int(c - dy)), (int(c + dx), int(c + dy)), 1, thickness=width)
    return m


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 7, 9, 12])
@pytest.mark.parametrize("vertical", [False, True])
def test_axis_aligned_bands_measure_their_width(width, vertical):
    widths = mask_widths(band(width, vertical=vertical))
    assert widths.size > 50
    assert np.median(widths) == pytest.approx(width, abs=0.05)


@pytest.mark.parametrize("width", [3, 5, 8])
@pytest.mark.parametrize("angle", [20, 45, 70])
def test_oblique_lines_measure_their_width_within_a_pixel(width, angle):
    m = drawn_line(width, angle)
    # the drawn line's true width: its area over its length (cv2.line's thickness is approximate)
    true_w = m.sum() / 120.0
    assert np.median(mask_widths(m)) == pytest.approx(true_w, abs=1.0)


def test_empty_mask_has_no_width_and_histogram_reports_none():
    assert mask_widths(np.zeros((20, 20), np.uint8)).size == 0
    h = WidthHistogram()
    assert h.median() is None
    h.add(np.zeros((20, 20), np.uint8))
    assert h.median() is None and h.samples == 0


def test_median_is_over_skeleton_pixels_of_all_images():
    acc = WidthAccumulator()
    # a long 3-px crack and a short 9-px one: the long one dominates the median
    long3 = band(3, w=200)
    short9 = band(9, w=40)
    acc.add(long3, long3)
    acc.add(short9, short9)
    r = acc.result()
    assert r.label_median_px == pytest.approx(3.0, abs=0.05)
    assert r.pred_median_px == r.label_median_px and r.error_px == 0


def test_thick_prediction_gives_positive_error():
    acc = WidthAccumulator()
    acc.add(band(8), band(5))
    r = acc.result()
    assert r.pred_median_px == pytest.approx(8, abs=0.05)
    assert r.label_median_px == pytest.approx(5, abs=0.05)
    assert r.error_px == pytest.approx(3, abs=0.1)


def test_spurs_from_ragged_edges_do_not_drag_the_median_down():
    m = band(7)
    rng = np.random.default_rng(0)
    edge = np.flatnonzero(m.any(axis=1))
    for x in rng.integers(15, 105, 25):  # one-pixel bumps on both edges
        m[edge[0] - 1, x] = 1
        m[edge[-1] + 1, x] = 1
    assert np.median(mask_widths(m)) == pytest.approx(7, abs=0.5)


def test_score_object_keeps_its_old_shape_and_gains_width_fields():
    gt = band(5)
    plain = ScoreAccumulator()
    plain.add(gt, gt)
    r = plain.result()
    assert r.width_pred_px is None and r.width_label_px is None and r.width_error_px is None
    assert CrackScore(1, 1.0, 1.0, 1.0, 1.0, 2.0).width_pred_px is None  # positional construction still works
    acc = ScoreAccumulator(widths=True)
    acc.add(band(7), gt)
    r = acc.result()
    assert r.f1 == pytest.approx(1.0)  # 1 px thicker on each side is within the 2 px tolerance
    assert (r.width_pred_px, r.width_label_px) == (pytest.approx(7, abs=0.05), pytest.approx(5, abs=0.05))
    assert r.width_error_px == pytest.approx(2, abs=0.1)
    d = r.to_dict()
    assert {"width_pred_px", "width_label_px", "width_error_px"} <= set(d)


def test_width_can_be_measured_on_another_mask_than_the_detection():
    acc = ScoreAccumulator(widths=True)
    acc.add(band(9), band(5), width_pred=band(5))
    r = acc.result()
    assert r.width_error_px == pytest.approx(0, abs=0.1)


def test_evaluate_on_mask_folders_reports_widths(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    cv2.imwrite(str(tmp_path / "pred" / "a.png"), band(6) * 255)
    cv2.imwrite(str(tmp_path / "gt" / "a.png"), band(4) * 255)
    pairs = FolderPairs([tmp_path / "pred" / "a.png"], [tmp_path / "gt" / "a.png"])
    r = evaluate(pairs)
    assert r.width_pred_px == pytest.approx(6, abs=0.05)
    assert r.width_label_px == pytest.approx(4, abs=0.05)
    assert evaluate(pairs, widths=False).width_pred_px is None


class _ProbSegmenter:
    threshold = 0.5

    def __init__(self, prob):
        self.prob = prob

    def probabilities(self, frame):
        return self.prob

    def segment(self, frame, threshold=None):
        return self.prob >= (self.threshold if threshold is None else threshold)


def test_evaluate_measures_widths_at_a_width_threshold(tmp_path):
    gt = band(4)
    # a soft crack: 0.9 on the 4 label rows, 0.6 one row further out on each side
    prob = np.where(band(6) > 0, 0.6, 0.0).astype(np.float32)
    prob[gt > 0] = 0.9
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((80, 120, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "gt" / "a.png"), gt * 255)
    pairs = FolderPairs([tmp_path / "img" / "a.png"], [tmp_path / "gt" / "a.png"])
    seg = _ProbSegmenter(prob)
    assert evaluate(pairs, seg).width_pred_px == pytest.approx(6, abs=0.05)
    r = evaluate(pairs, seg, width_threshold=0.8)
    assert r.width_pred_px == pytest.approx(4, abs=0.05) and r.width_error_px == pytest.approx(0, abs=0.1)
    assert r.f1 == pytest.approx(1.0)  # detection still at the segmenter's threshold


def test_disk_footprint_is_the_euclidean_two_pixel_disk():
    k = disk(2.0)
    assert k.shape == (5, 5) and k.sum() == 13  # (2, 1) is sqrt(5) > 2 away: excluded


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_sweep_equals_the_plain_metric_at_every_threshold(seed):
    rng = np.random.default_rng(seed)
    grid = np.round(np.arange(0.05, 0.951, 0.025), 3)
    sweep = ThresholdSweep(grid)
    plain = [ScoreAccumulator() for _ in grid]
    for k in range(3):
        gt = drawn_line(3 + k, 30 * k + 10, size=96) > 0
        noise = cv2.GaussianBlur(rng.random((96, 96)).astype(np.float32), (0, 0), 1.5)
        prob = np.clip(0.6 * cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 1.2) + 0.5 * noise, 0, 1)
        prob[0, 0] = 0.5  # a value exactly on the grid
        sweep.add(prob.astype(np.float32), gt)
        for t, acc in zip(grid, plain):
            acc.add(prob >= t, gt)
    for got, want in zip(sweep.results(), (a.result() for a in plain)):
        assert (got.precision, got.recall, got.f1, got.iou) == (want.precision, want.recall, want.f1, want.iou)
