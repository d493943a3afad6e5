"""`crackseg-edge eval` with the shipped bundle: F1, IoU and the median widths, measured at the
model's own width threshold unless told otherwise; bad flags end in one line and exit 2."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge_agent.bundle import load_bundle
from edge_agent.cli import main
from edge_agent.detectors.runtime import REFERENCE_BUNDLE


def labeled_folder(root):
    """Two road photos (the bundle's selftest image, shifted) with a hand-drawn crack label."""
    image = cv2.imread(str(REFERENCE_BUNDLE / "selftest" / "input.png"), cv2.IMREAD_COLOR)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, shift in enumerate((0, 40)):
        photo = np.roll(image, shift, axis=1)
        label = np.zeros(photo.shape[:2], np.uint8)
        label[148:153, 60 + shift:400 + shift] = 255  # a crack 5 px wide
        cv2.imwrite(str(root / "images" / f"road{i}.png"), photo)
        cv2.imwrite(str(root / "masks" / f"road{i}.png"), label)
    return root


def run_eval(capsys, *args) -> tuple[int, dict | None, str]:
    code = main(["eval", *map(str, args), "--backend", "tflite", "--threads", "1"])
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return code, (json.loads(last) if last.startswith("{") else None), out + err


def test_eval_reports_widths_at_the_models_width_threshold(tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    folder = labeled_folder(tmp_path / "set")
    contract_wt = load_bundle(REFERENCE_BUNDLE).contract.width_threshold
    code, result, out = run_eval(capsys, folder)
    assert code == 0 and result is not None
    assert result["width_threshold"] == contract_wt
    assert result["width_label_px"] == pytest.approx(5.0, abs=0.5)
    assert result["width_pred_px"] is not None and "median width along the skeleton" in out
    code, at_half, _ = run_eval(capsys, folder, "--width-threshold", "0.5")
    assert code == 0 and at_half["width_threshold"] == 0.5 and at_half["f1"] == result["f1"]
    code, finer, _ = run_eval(capsys, folder, "--gsd-mm-per-px", "0.5")  # shrunk to the model's resolution
    assert code == 0 and finer["images"] == 2


def test_eval_refuses_a_width_threshold_outside_zero_one(tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    code, _, out = run_eval(capsys, labeled_folder(tmp_path / "set"), "--width-threshold", "2")
    assert code == 2 and "between 0 and 1" in out
