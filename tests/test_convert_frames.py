"""Frame-input graphs: the wrapped network equals normalise -> network -> sigmoid, the deploy rewrites are
exact, frames are mosaics of photographs at native scale, and the default sizes come from the device configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_agent.contract import InferenceContract
from edge_agent.detectors import open_model
from tests.convert_fixtures import EXPORT_HW, synthetic_pavement, tiny_chain
from tests.tiny_models import tiny_torch_model


def random_reference_network(seed: int = 0, widths=(16, 32, 32, 32, 32)):
    """The reference architecture with random weights and non-trivial batch-norm statistics."""
    return tiny_torch_model(seed, widths, mean=0.5, var=(0.5, 2.0), bias=0.2)


def reference_probabilities(module, contract: InferenceContract, frame: np.ndarray) -> np.ndarray:
    order = [2, 1, 0] if contract.color_order == "RGB" else [0, 1, 2]
    x = (frame[..., order].astype(np.float32) - np.asarray(contract.mean, np.float32)) / np.asarray(
        contract.std, np.float32)
    with torch.no_grad():
        return torch.sigmoid(module(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))).numpy()[0, 0]


def test_deploy_rewrites_are_exact_and_happen():
    from converters.deploy import SplitUpBlock, deploy_network

    model = random_reference_network()
    deployed = deploy_network(model)
    assert deployed is not model
    assert all(isinstance(getattr(deployed, n), SplitUpBlock) for n in ("dec3", "dec2", "dec1", "dec0"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    convs = lambda m: sum(isinstance(c, torch.nn.Conv2d) for c in m.modules())  # noqa: E731
    assert convs(deployed) == convs(model) + 4 - 1  # four 1x1 fuses split in two, one 1x1 merged into the head
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert float((deployed(x) - model(x)).abs().max()) < 1e-4
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3, padding=1))  # not the reference architecture
    assert deploy_network(other) is other


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_frame_model_folds_normalisation_into_the_first_convolution(color_order):
    from converters.frame_model import frame_input_model

    model = random_reference_network(1)
    contract = InferenceContract(color_order=color_order, mean=(100.0, 120.0, 140.0), std=(50.0, 60.0, 70.0))
    wrapped = frame_input_model(model, contract, (64, 96), "uint8")
    assert wrapped.pad == 1  # folded: the 3x3 stem lost its zero padding, the frame gets mean-pixel borders
    first = next(m for m in wrapped.network.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.padding == (0, 0)
    frame = synthetic_pavement(np.random.default_rng(3), 64, 96)[0]
    frame[:, :5] = [255, 0, 30]  # a coloured border: a wrong channel order or padding would show
    with torch.no_grad():
        out = wrapped(torch.from_numpy(frame[None])).numpy()
        out_f = frame_input_model(model, contract, (64, 96), "float32")(
            torch.from_numpy(frame[None].astype(np.float32))).numpy()
    assert out.shape == (1, 64, 96, 1)
    ref = reference_probabilities(model, contract, frame)
    assert np.abs(out[0, ..., 0] - ref).max() < 1e-4 and np.abs(out_f[0, ..., 0] - ref).max() < 1e-4


def test_frame_model_without_a_leading_convolution_keeps_explicit_ops():
    from converters.frame_model import frame_input_model

    class Scaled(torch.nn.Module):  # the input is used before any convolution
        def __init__(self):
            super().__init__()
            self.net = random_reference_network(2)

        def forward(self, x):
            return self.net(x * 0.5)

    model = Scaled().eval()
    contract = InferenceContract()
    wrapped = frame_input_model(model, contract, (32, 48), "uint8")
    assert wrapped.pad is None and wrapped.swap
    frame = synthetic_pavement(np.random.default_rng(4), 32, 48)[0]
    with torch.no_grad():
        out = wrapped(torch.from_numpy(frame[None])).numpy()[0, ..., 0]
    assert np.abs(out - reference_probabilities(model, contract, frame)).max() < 1e-4


def test_uint8_graphs_equal_float_graphs_with_runtime_normalisation(tmp_path):
    """Same frame, same tiles: the frame graph equals the plain graph fed by the runtime's normalisation."""
    from converters.calibration import ImageFolderCalibrationReader
    from converters.export_onnx import export_onnx
    from converters.export_tflite import export_tflite_fp32, export_tflite_int8
    from converters.loading import load_model
    from converters.quantize_onnx import quantize_onnx

    chain = tiny_chain()
    loaded = load_model(chain["checkpoint"])
    plain = {"onnx-fp32": export_onnx(loaded.module, tmp_path / "p.onnx", loaded.contract, EXPORT_HW,
                                      frame_input=False),
             "tflite-fp32": export_tflite_fp32(loaded.module, tmp_path / "p.tflite", loaded.contract, EXPORT_HW,
                                               frame_input=False)}
    reader = ImageFolderCalibrationReader(chain["data"], loaded.contract.model_copy(update={"input_size": EXPORT_HW}),
                                          count=4)
    plain["onnx-int8"] = quantize_onnx(plain["onnx-fp32"], tmp_path / "p-int8.onnx", reader, progress=False)
    plain["tflite-int8"] = export_tflite_int8(plain["tflite-fp32"], tmp_path / "p-int8.tflite", reader,
                                              progress=False)
    frame = synthetic_pavement(np.random.default_rng(9), 150, 200)[0]
    for key, path in plain.items():
        old = open_model(path)
        new = open_model(chain["bundle"] / f"tiny-64x96-{key.split('-')[1]}.{key.split('-')[0]}")
        assert (old.contract.input_dtype, new.contract.input_dtype) == ("float32", "uint8")
        a, b = old.probabilities(frame), new.probabilities(frame)
        if key.endswith("fp32"):
            assert np.abs(a - b).max() < 1e-4, key
        else:  # two separately calibrated INT8 models: close on average, the same masks almost everywhere
            assert np.abs(a - b).mean() < 0.03, key
            t = old.threshold
            assert np.mean((a >= t) == (b >= t)) > 0.97, key


def test_mosaics_place_photographs_at_native_scale_and_use_each_once(tmp_path):
    import cv2

    from converters.mosaic import MosaicItem, cells_per_frame, iter_mosaics

    items = []
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 60)] * 5 + [(100, 100)] * 2):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = (rng.random((h, w)) > 0.9).astype(np.uint8) * 255
        cv2.imwrite(str(tmp_path / f"i{i}.png"), img)
        cv2.imwrite(str(tmp_path / f"m{i}.png"), mask)
        items.append(MosaicItem(tmp_path / f"i{i}.png", tmp_path / f"m{i}.png"))
    assert cells_per_frame((40, 60), (64, 96)) == 4
    mosaics = list(iter_mosaics(items, (64, 96)))
    # 5 small photographs: one full 2x2 mosaic and one completed with the group's first ones; 2 large: one each
    assert [m.sources for m in mosaics] == [["i0", "i1", "i2", "i3"], ["i5"], ["i6"], ["i4", "i0", "i1", "i2"]]
    first = mosaics[0]
    assert first.frame.shape == (64, 96, 3) and first.mask.shape == (64, 96) and first.mask.dtype == bool
    assert np.array_equal(first.frame[:40, :60], cv2.imread(str(tmp_path / "i0.png")))
    assert np.array_equal(first.frame[40:, 60:], cv2.imread(str(tmp_path / "i3.png"))[:24, :36])  # cropped
    assert np.array_equal(first.mask[:40, 60:], cv2.imread(str(tmp_path / "m1.png"), 0)[:, :36] > 0)
    assert len(list(iter_mosaics(items, (64, 96), limit=2))) == 2


def test_default_sizes_are_device_cameras_rounded_up_to_the_stride(tmp_path):
    from converters.outdir import default_sizes

    (tmp_path / "a.yaml").write_text("camera:\n  width: 1920\n  height: 1080\n")
    (tmp_path / "b.yaml").write_text("camera:\n  width: 1280\n  height: 720\n")
    (tmp_path / "c.yaml").write_text("camera:\n  source: /dev/video0\n")  # no size: ignored
    assert default_sizes(16, tmp_path) == [(320, 480), (720, 1280), (1088, 1920)]
    assert default_sizes(16, tmp_path / "missing") == [(320, 480), (720, 1280)]
    assert (720, 1280) in default_sizes(16)  # the shipped device configs
