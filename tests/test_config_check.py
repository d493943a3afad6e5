"""check-config tries what the agent will need: the backend's runtime and the model's file or bundle.

Before, a TFLite config said OK on a machine without any TFLite interpreter and the agent
failed at start-up; now check-config names the missing package (exit 2).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from edge_agent.config import check_config_main
from edge_agent.config.environment import LEGACY_ENV

MINIMAL = "device_id: van-07\ncamera:\n  source: /dev/video0\n"
TFLITE_MODULES = ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("CRACKSEG_")] + [*LEGACY_ENV, "INFERENCE_DEVICE"]:
        monkeypatch.delenv(name, raising=False)


def no_tflite(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every TFLite interpreter unimportable, as on a machine without them (None in sys.modules)."""
    for name in TFLITE_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_tflite_without_an_interpreter_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]):
    no_tflite(monkeypatch)
    path = write(tmp_path, MINIMAL + "model:\n  backend: tflite\n")
    assert check_config_main(path) == 2
    err = capsys.readouterr().err
    assert f"{path}:5: model.backend: no TFLite interpreter installed: pip install 'crackseg-edge[tflite]'" in err
    assert "1 problem(s)" in err


def test_inference_device_tflite_without_an_interpreter_names_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    no_tflite(monkeypatch)
    monkeypatch.setenv("INFERENCE_DEVICE", "tflite")
    assert check_config_main(write(tmp_path, MINIMAL)) == 2
    assert "env INFERENCE_DEVICE: model.backend: no TFLite interpreter installed" in capsys.readouterr().err


def test_onnx_without_onnxruntime_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert check_config_main(write(tmp_path, MINIMAL + "model:\n  backend: onnx\n")) == 2
    assert "model.backend: onnxruntime is not installed here: pip install onnxruntime" in capsys.readouterr().err


def test_auto_needs_one_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    assert check_config_main(write(tmp_path, MINIMAL)) == 2  # backend auto is the default
    assert "no inference runtime is installed" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None and importlib.util.find_spec(
    "tflite_runtime") is None, reason="no TFLite interpreter installed here")
def test_tflite_with_an_interpreter_is_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path, MINIMAL + "model:\n  backend: tflite\n")
    assert check_config_main(path) == 0, capsys.readouterr().err
    assert "model shipped reference bundle (tflite" in capsys.readouterr().out


def test_a_model_file_of_the_other_backend_is_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "crack.onnx").write_bytes(b"onnx")
    path = write(tmp_path, MINIMAL + "model:\n  path: crack.onnx\n  backend: tflite\n")
    assert check_config_main(path) == 2
    assert f"{path}:5: model.path: {tmp_path / 'crack.onnx'} is a .onnx file but model.backend is tflite" in \
        capsys.readouterr().err



def test_an_unknown_model_format_is_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "crack.pt").write_bytes(b"torch")
    path = write(tmp_path, MINIMAL + "model:\n  path: crack.pt\n")
    assert check_config_main(path) == 2
    assert f"{path}:5: model.path: {tmp_path / 'crack.pt'}: unknown model format '.pt'" in capsys.readouterr().err


def test_the_summary_does_not_print_a_camera_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr("edge_agent.config.check.backend_problem", lambda backend: None)
    path = write(tmp_path, "device_id: van-07\ncamera:\n  source: rtsp://admin:s3cret@10.0.0.5:554/stream\n")
    assert check_config_main(path) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "s3cret" not in out and "camera rtsp://admin:***@10.0.0.5:554/stream;" in out
