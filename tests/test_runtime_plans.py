"""Which artifact runs which frame, how tiles blend, resampling to the model's ground resolution,
and uint8 graphs that normalise inside themselves: on real exported tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.contract import InferenceContract
from edge_agent.detectors import open_model
from edge_agent.detectors.plan import choose_plan, gsd_scale
from edge_agent.detectors.preprocess import blend_weights, plan_tiles
from tests.tiny_models import export_onnx, tiny_torch_model


def frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- plans ------------------------------------------------------------------------------------
def test_a_fitting_artifact_runs_the_whole_frame_and_others_tile():
    sizes = [(720, 1280), (320, 480)]
    assert choose_plan((720, 1280), sizes, 16).strategy == "full"
    assert choose_plan((720, 1280), sizes, 16).artifact == 0
    small = choose_plan((320, 480), sizes, 16)
    assert (small.strategy, small.artifact) == ("full", 1)
    big = choose_plan((1080, 1920), sizes, 16)
    assert big.strategy == "tile" and big.input_size == (720, 1280) and len(big.tiles) == 4
    odd = choose_plan((360, 360), sizes, 16)  # a small photo: two 320x480 tiles, not one mostly-padded 720p
    assert odd.strategy == "tile" and odd.input_size == (320, 480) and len(odd.tiles) == 2
    assert choose_plan((700, 1270), sizes, 16).strategy == "full"  # padded to the stride it fits
    assert choose_plan((300, 500), [None, (320, 480)], 16).strategy == "pad"


def test_blend_weights_sum_to_one_everywhere():
    h, w = 300, 700
    tiles = plan_tiles(h, w, 128, 256, overlap=32)
    total = np.zeros((h, w), np.float32)
    for t, wgt in zip(tiles, blend_weights(tiles, h, w, 32)):
        total[t.y:t.y + t.h, t.x:t.x + t.w] += wgt
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_gsd_scale_brings_frames_to_the_model_resolution():
    assert gsd_scale((0.8, 0.8), 1.6) == (0.5, 0.5)
    assert gsd_scale((0.8, 3.2), 1.6) == (1.0, 0.5)  # shrink only: the coarser axis stays as it is
    assert gsd_scale((3.2, 2.0), 1.6) is None  # a coarser camera's frames are used as they are
    assert gsd_scale(None, 1.6) is None and gsd_scale((1.0, 1.0), None) is None
    plan = choose_plan((720, 1280), [(360, 640)], 16, scale=(0.5, 0.5))
    assert plan.work_size == (360, 640) and plan.strategy == "full" and plan.resampled
    assert not choose_plan((720, 1280), [(720, 1280)], 16, scale=(1.03, 0.98)).resampled  # within 5 %


# -- real models ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("plans")
    model = tiny_torch_model(seed=5)
    return {"torch": model, "dir": d, "dynamic": export_onnx(model, d / "dynamic.onnx", None)}


def export_uint8_onnx(model, path: Path, size: tuple[int, int], gsd: float | None = None) -> Path:
    """The tiny network behind a uint8 NHWC BGR input that normalises inside the graph."""
    import onnx
    import torch

    from edge_agent.contract import CONTRACT_METADATA_KEY, IMAGENET_MEAN, IMAGENET_STD

    class Pixels(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, x):
            rgb = x.permute(0, 3, 1, 2)[:, [2, 1, 0]].float()
            return torch.sigmoid(self.net((rgb - self.mean) / self.std))

    h, w = size
    torch.onnx.export(Pixels(model).eval(), torch.zeros(1, h, w, 3, dtype=torch.uint8), str(path),
                      input_names=["image"], output_names=["prob"], opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key = CONTRACT_METADATA_KEY
    entry.value = InferenceContract(input_size=size, layout="NHWC", color_order="RGB", input_dtype="uint8",
                                    output="probabilities", gsd_mm_per_px=gsd).to_json()
    onnx.save(proto, str(path))
    return path


def test_uint8_graph_equals_float_graph_with_runtime_normalisation(tiny):
    u8 = open_model(export_uint8_onnx(tiny["torch"], tiny["dir"] / "u8.onnx", (64, 96)))
    assert u8.contract.input_dtype == "uint8" and u8.contract.layout == "NHWC"
    f = frame(64, 96, seed=2)
    np.testing.assert_allclose(u8.probabilities(f), open_model(tiny["dynamic"]).probabilities(f), atol=1e-4)


def test_resampling_runs_the_model_at_its_own_ground_resolution(tiny):
    import cv2

    path = export_uint8_onnx(tiny["torch"], tiny["dir"] / "u8-gsd.onnx", (64, 96), gsd=1.6)
    fine_camera = open_model(path, gsd_mm_per_px=0.8)  # cracks twice as wide in pixels as the model knows
    f = frame(128, 192, seed=3)
    prob = fine_camera.probabilities(f)
    plan = fine_camera.last_plan
    assert plan is not None and plan.work_size == (64, 96) and plan.strategy == "full"
    assert prob.shape == (128, 192)
    expected = cv2.resize(open_model(path).probabilities(cv2.resize(f, (96, 64), interpolation=cv2.INTER_AREA)),
                          (192, 128), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    same = open_model(path, gsd_mm_per_px=1.6)
    same.probabilities(frame(64, 96))
    assert same.last_plan is not None and not same.last_plan.resampled
    coarse_camera = open_model(path, gsd_mm_per_px=3.2)  # never enlarged
    coarse_camera.probabilities(frame(64, 96))
    assert coarse_camera.last_plan is not None and not coarse_camera.last_plan.resampled


def test_bundle_with_two_sizes_opens_only_what_frames_need(tiny, tmp_path):
    from edge_agent.bundle.manifest import Manifest, SourceInfo
    from edge_agent.bundle.pack import artifact_entry, write_manifest

    root = tmp_path / "bundle"
    root.mkdir()
    for size in [(64, 96), (128, 192)]:
        export_uint8_onnx(tiny["torch"], root / f"m-{size[0]}x{size[1]}.onnx", size)
    contract = InferenceContract(layout="NHWC", input_dtype="uint8", output="probabilities", input_size=(128, 192))
    manifest = Manifest(name="two", version="1.0.0", source=SourceInfo(checkpoint="x", checkpoint_sha256="0" * 64,
                                                                       kind="test"),
                        contract=contract,
                        artifacts=[artifact_entry(root, f"m-{h}x{w}.onnx", "onnx", "fp32", (h, w), "NHWC")
                                   for h, w in [(64, 96), (128, 192)]])
    write_manifest(root, manifest)
    seg = open_model(root)
    assert [a.input_size for a in seg.artifacts] == [(128, 192), (64, 96)]
    assert seg.info.input_sizes == [(128, 192), (64, 96)]
    seg.probabilities(frame(128, 192))
    assert seg.last_plan is not None and seg.last_plan.strategy == "full" and seg.last_plan.artifact == 0
    assert not seg.artifacts[1].is_open  # never needed, never loaded
    small = seg.probabilities(frame(60, 90, seed=4))
    assert seg.last_plan.artifact == 1 and seg.artifacts[1].is_open and small.shape == (60, 90)


def test_backend_auto_measures_once_and_remembers(tmp_path, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    from edge_agent.detectors import choice

    seg = open_model(backend="auto", threads=1, choice_cache=tmp_path)  # the shipped bundle: onnx and tflite
    assert not any(a.is_open for a in seg.artifacts)  # nothing opened before a frame needs it
    seg.probabilities(frame(320, 480))
    used = seg.artifacts[seg.plan_for(320, 480).artifact]
    assert used.is_open and seg.info.backend in ("onnx", "tflite") and seg.info.path == str(used.path)
    assert sum(a.is_open for a in seg.artifacts) == 1  # the 720p one stays closed (~200 MB saved)
    saved = json.loads((tmp_path / choice.CACHE_NAME).read_text())
    (entry,) = saved.values()
    assert entry["backend"] == seg.info.backend and set(entry["ms"]) == {"onnx", "tflite"}
    assert all(ms > 0 for ms in entry["ms"].values())

    def no_timing(*a, **k):
        raise AssertionError("the remembered choice was measured again")

    monkeypatch.setattr(choice, "time_backend", no_timing)
    again = open_model(backend="auto", threads=1, choice_cache=tmp_path)
    again.probabilities(frame(320, 480))
    assert again.info.backend == seg.info.backend
    assert again.info.path.endswith(".tflite" if seg.info.backend == "tflite" else ".onnx")


def test_a_second_worker_gets_its_own_tflite_interpreter(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from edge_agent.detectors.runtime import REFERENCE_BUNDLE

    tflite = next(REFERENCE_BUNDLE.glob("*320x480-int8.tflite"))
    seg = open_model(tflite, threads=1)
    twin = seg.clone()
    assert twin.artifacts[0].backend is not seg.artifacts[0].backend
    f = frame(320, 480, seed=9)
    np.testing.assert_array_equal(twin.probabilities(f), seg.probabilities(f))


def test_selftest_of_an_auto_segmenter_checks_the_files_it_chose(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from edge_agent.bundle import load_bundle
    from edge_agent.detectors.runtime import REFERENCE_BUNDLE
    from edge_agent.detectors.selftest import check_segmenter

    seg = open_model(backend="auto", threads=1, choice_cache=tmp_path)
    result = check_segmenter(seg, load_bundle(REFERENCE_BUNDLE))
    assert result.passed
    chosen = {str(a.path).rsplit(".", 1)[1] for a in seg.artifacts}
    assert chosen <= {"onnx", "tflite"} and all(a.is_open for a in seg.artifacts)


def test_naming_the_backend_opens_no_session():
    """The agent logs the backend at start: asking must not open the 720p artifact (~200 MB RSS
    that a 320x480 camera never uses)."""
    pytest.importorskip("ai_edge_litert")
    seg = open_model(backend="tflite", precision="int8", threads=1)  # the shipped bundle: 720x1280 and 320x480
    assert seg.backend_name == "tflite" and not any(a.is_open for a in seg.artifacts)
    seg.probabilities(frame(320, 480))
    assert seg.backend_name == "tflite"
    assert [a.is_open for a in seg.artifacts] == [False, True]  # largest first: the 720p one stays closed


def test_the_update_selftest_leaves_only_what_frames_open():
    """An update's selftest opens every artifact; the model swapped in must not keep them all
    (a 320x480 camera would carry the 720p interpreter until the next restart)."""
    pytest.importorskip("ai_edge_litert")
    from edge_agent.bundle import load_bundle
    from edge_agent.detectors.runtime import REFERENCE_BUNDLE
    from edge_agent.updates.device import selftest_segmenter

    seg = open_model(backend="tflite", precision="int8", threads=1)
    result = selftest_segmenter(seg, load_bundle(REFERENCE_BUNDLE))
    assert result["passed"]
    assert not any(a.is_open for a in seg.artifacts)
    prob = seg.probabilities(frame(320, 480, seed=3))
    assert prob.shape == (320, 480) and [a.is_open for a in seg.artifacts] == [False, True]
