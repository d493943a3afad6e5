"""The F1@2px / IoU arithmetic on masks whose answer is known by hand."""

import numpy as np
import pytest

from edge_agent.evaluation.metrics import ScoreAccumulator, score_pair


def line_mask(h=50, w=50, row=25, cols=(10, 40)):
    m = np.zeros((h, w), bool)
    m[row, cols[0]:cols[1]] = True
    return m


def test_identical_masks_score_one():
    gt = line_mask()
    acc = ScoreAccumulator()
    acc.add(gt, gt)
    r = acc.result()
    assert r.precision == r.recall == r.f1 == r.iou == 1.0


def test_two_pixel_shift_is_tolerated_but_three_is_not():
    gt = line_mask(row=25)
    near = score_pair(line_mask(row=27), gt)
    far = score_pair(line_mask(row=28), gt)
    assert near.pred_matched == near.pred_pixels == 30 and near.gt_recalled == 30
    assert far.pred_matched == 0 and far.gt_recalled == 0
    assert near.intersection == 0  # IoU has no tolerance


def test_diagonal_distance_is_euclidean():
    gt = np.zeros((20, 20), bool)
    gt[10, 10] = True
    pred = np.zeros_like(gt)
    pred[12, 11] = True  # sqrt(5) = 2.24 px away: outside 2 px
    assert score_pair(pred, gt).pred_matched == 0
    pred2 = np.zeros_like(gt)
    pred2[11, 11] = True  # sqrt(2): inside
    assert score_pair(pred2, gt).pred_matched == 1


def test_counts_are_summed_over_images_not_averaged():
    acc = ScoreAccumulator()
    big = line_mask(w=200, cols=(0, 100))
    acc.add(big, big)  # 100 px, perfect
    small_gt = line_mask(cols=(10, 20))
    acc.add(np.zeros_like(small_gt), small_gt)  # 10 px, all missed
    r = acc.result()
    assert r.precision == 1.0
    assert r.recall == pytest.approx(100 / 110)
    assert r.f1 == pytest.approx(2 * (100 / 110) / (1 + 100 / 110))


def test_empty_prediction_on_empty_truth_is_perfect_and_shape_mismatch_refused():
    z = np.zeros((10, 10), bool)
    acc = ScoreAccumulator()
    acc.add(z, z)
    assert acc.result().f1 == 1.0
    with pytest.raises(ValueError, match="shape"):
        score_pair(np.zeros((5, 5)), np.zeros((6, 6)))
