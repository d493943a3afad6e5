"""The scale sweep's resampling (a label stays a faithful drawing of the same crack), frame
composition, and the sweep/threshold choice on a stand-in model; the trainer's label rules."""

import numpy as np
import pytest

from edge_agent.evaluation.width import mask_widths
from reference_model.dataset import Augmenter, cap_label_width, resize_label
from reference_model.scale_eval import (
    choose_threshold,
    compose_frame,
    resample_image,
    resample_mask,
    summary,
    sweep_model,
)


def band(width: int, h: int = 120, w: int = 160) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    top = h // 2 - width // 2
    m[top:top + width, 8:w - 8] = 1
    return m


def scene(h: int = 120, w: int = 160, width: int = 6) -> tuple[np.ndarray, np.ndarray]:
    mask = band(width, h, w)
    img = np.full((h, w, 3), 150, np.uint8)
    img[mask > 0] = 40
    return img, mask


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.5, 2.0, 2.5])
def test_resampled_label_width_follows_the_scale(scale):
    m = resample_mask(band(8), scale)
    assert m.shape == (round(120 * scale), round(160 * scale))
    assert np.median(mask_widths(m)) == pytest.approx(8 * scale, abs=1.0)


def test_thin_crack_stays_a_connected_line_when_shrunk():
    thin = band(1)
    for scale in (0.5, 0.4, 0.3):
        m = resample_mask(thin, scale)
        cols = m.any(axis=0)
        first, last = np.flatnonzero(cols)[[0, -1]]
        assert cols[first:last + 1].all(), f"broken at scale {scale}"
        assert m.sum(axis=0).max() <= 2  # still a thin line


def test_image_resampling_keeps_dtype_and_range():
    img, _ = scene()
    for scale in (0.5, 2.5):
        out = resample_image(img, scale)
        assert out.dtype == np.uint8 and out.shape[:2] == (round(120 * scale), round(160 * scale))
    assert resample_image(img, 1.0) is img


@pytest.mark.parametrize("size", [(60, 80), (200, 420), (720, 1280)])
def test_compose_frame_mirrors_image_and_mask_alike(size):
    img, mask = scene()
    f_img, f_mask = compose_frame(img, mask, size)
    assert f_img.shape == (*size, 3) and f_mask.shape == size
    # the mask still marks exactly the dark pixels: image and mask were tiled identically
    assert np.array_equal(f_mask > 0, f_img[..., 0] == 40)


def test_sweep_on_a_stand_in_model_and_threshold_choice():
    def predict(img):  # "model": dark pixels are crack, with a soft confidence
        return np.where(img[..., 0] < 100, 0.8, 0.1).astype(np.float32)

    sets = {"toy": [scene(), scene(width=3)]}
    rows = sweep_model(predict, sets, [0.5, 1.0, 2.0], (96, 128), threshold=0.5, width_thresholds=[0.5],
                       log=lambda m: None)
    assert len(rows) == 6 and {r["layout"] for r in rows} == {"native", "frame"}
    for r in rows:
        assert r["f1"] == pytest.approx(1.0, abs=1e-9), r
        assert r["pred_width_px"]["0.500"] == r["label_width_px"]
    t, f = choose_threshold(rows)
    assert 0.1 < t <= 0.8 and f == pytest.approx(1.0)
    s = summary(rows)
    assert s["worst_f1"] == pytest.approx(1.0)


def test_careful_labels_can_be_trained_on_whole():
    wide = band(15)
    core, ignore, skel = cap_label_width(wide, 2.0, with_skeleton=True)
    assert np.median(mask_widths(core)) == pytest.approx(5, abs=0.6) and ignore.sum() > 0
    assert skel.sum() > 0 and (skel <= wide).all()
    whole, none = cap_label_width(wide, 0)
    assert np.array_equal(whole, wide) and none.sum() == 0


def test_training_label_resize_matches_the_evaluation_rule():
    m = band(1)
    _, _, skel = cap_label_width(m, 0, with_skeleton=True)
    for scale in (0.4, 2.6):
        size = (round(160 * scale), round(120 * scale))
        got = resize_label(m, size, scale, skel)
        assert np.array_equal(got, resample_mask(m, scale) > 0)


def test_augmenter_scale_range_reaches_both_ends_and_keeps_shapes():
    img, mask = scene()
    core, ignore, skel = cap_label_width(mask, 0, with_skeleton=True)
    aug = Augmenter(crop=64, scale_range=(0.4, 2.6), seed=0)
    for _ in range(10):
        i, t, b = aug(img, core, ignore, skel)
        assert i.shape == (64, 64, 3) and t.shape == b.shape == (64, 64)
        assert not (t & b).any()
    aug_old = Augmenter(crop=64, seed=0)  # the old call signature still works
    i, t, b = aug_old(img, core, ignore)
    assert i.shape == (64, 64, 3)


def test_width_threshold_choice_matches_label_widths():
    from reference_model.scale_eval import choose_width_threshold

    def predict(img):  # soft crack: 0.9 on the dark core, 0.6 on a 2-px halo around it
        dark = (img[..., 0] < 100).astype(np.uint8)
        halo = __import__("cv2").dilate(dark, np.ones((5, 5), np.uint8))
        return np.where(dark > 0, 0.9, np.where(halo > 0, 0.6, 0.05)).astype(np.float32)

    rows = sweep_model(predict, {"toy": [scene(width=4)]}, [1.0, 2.0], None, threshold=0.5,
                       width_thresholds=[0.5, 0.8], log=lambda m: None)
    chosen = choose_width_threshold(rows, "toy")
    assert chosen["width_threshold"] == 0.8 and abs(chosen["error_px"]) < 0.5
    assert chosen["mean_abs_error_over_scales_px"] < 0.5
    assert chosen["error_by_threshold_px"]["0.500"] > 3


def test_robust_range_interpolates_between_tested_scales():
    from reference_model.scale_eval import robust_range

    f1 = {0.5: 0.80, 1.0: 0.79, 2.0: 0.70, 4.0: 0.60}
    rows = [{"set": "s", "layout": "native", "scale": s, "f1": v} for s, v in f1.items()]
    r = robust_range(rows, "s", tol=0.03)
    assert r["reference_scale"] == 0.5 and r["low"] == 0.5 and r["low_open"]
    # 0.77 is reached 2/9 of the way (in log-scale) from 1 to 2
    assert r["high"] == pytest.approx(2 ** (2 / 9), abs=1e-3) and not r["high_open"]
    r1 = robust_range(rows, "s", tol=0.03, reference="1")
    assert r1["reference_scale"] == 1.0 and r1["low"] == 0.5 and r1["high"] == pytest.approx(2 ** (1 / 3), abs=1e-3)


def test_renormalized_prediction_runs_the_model_at_training_resolution():
    from reference_model.scale_eval import predict_renormalized

    seen = []

    def predict(img):
        seen.append(img.shape[:2])
        return np.where(img[..., 0] < 100, 0.9, 0.1).astype(np.float32)

    img, mask = scene()
    big = resample_image(img, 2.0)
    prob = predict_renormalized(predict, big, 2.0)
    assert seen[-1] == (120, 160) and prob.shape == big.shape[:2]
    rows = sweep_model(predict, {"toy": [(img, mask)]}, [0.5, 2.0], None, threshold=0.5, width_thresholds=[],
                       log=lambda m: None, renormalize=True)
    assert all(r["f1"] > 0.95 for r in rows)


def test_weight_average_is_elementwise_and_refuses_other_architectures():
    import torch

    from reference_model.average import average_state

    fine = {"w": torch.ones(2, 2), "n": torch.tensor(5)}
    base = {"w": torch.zeros(2, 2), "n": torch.tensor(3)}
    out = average_state(fine, base, 0.25)
    assert torch.allclose(out["w"], torch.full((2, 2), 0.25)) and int(out["n"]) == 5
    with pytest.raises(ValueError):
        average_state(fine, {"w": torch.zeros(3)}, 0.5)
