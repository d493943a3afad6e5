"""The inference runtime on real exported models: agreement with torch, tiling, padding, errors."""


import numpy as np
import pytest

from edge_agent.detectors import FrameError, ModelError, open_model
from edge_agent.detectors.preprocess import plan_tiles
from tests.tiny_models import export_onnx, tiny_torch_model, torch_probabilities


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    model = tiny_torch_model()
    return {
        "torch": model,
        "dynamic": export_onnx(model, d / "dynamic.onnx", None),
        "fixed": export_onnx(model, d / "fixed.onnx", (64, 96)),
    }


def frame(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_onnx_fp32_matches_torch_at_odd_frame_sizes(tiny):
    seg = open_model(tiny["dynamic"])
    assert seg.info.strategy == "pad"
    for h, w in [(64, 96), (77, 131), (33, 17)]:
        f = frame(h, w, seed=h)
        prob = seg.probabilities(f)
        assert prob.shape == (h, w) and prob.dtype == np.float32
        np.testing.assert_allclose(prob, torch_probabilities(tiny["torch"], f), atol=2e-4)


def test_fixed_size_model_tiles_at_native_resolution(tiny):
    seg = open_model(tiny["fixed"])
    assert seg.info.strategy == "tile" and seg.info.input_size == (64, 96)
    f = frame(150, 260, seed=3)
    tiled = seg.probabilities(f)
    whole = torch_probabilities(tiny["torch"], f)
    assert tiled.shape == (150, 260)
    # Tiles see less context near their seams, so agreement is close but not exact.
    assert np.mean(np.abs(tiled - whole)) < 0.02
    # smaller than one tile: padded into a single tile, output cropped back
    small = frame(40, 50, seed=4)
    assert seg.probabilities(small).shape == (40, 50)


def test_tile_plan_covers_every_pixel_with_overlap():
    tiles = plan_tiles(720, 1280, 320, 480, overlap=32)
    cover = np.zeros((720, 1280), int)
    for t in tiles:
        cover[t.y:t.y + t.h, t.x:t.x + t.w] += 1
    assert cover.min() >= 1
    assert len({t.y for t in tiles}) == 3 and len({t.x for t in tiles}) == 3


def test_grey_and_bgra_frames_are_accepted_bad_frames_refused(tiny):
    seg = open_model(tiny["dynamic"])
    assert seg.segment(frame(32, 32)[..., 0]).shape == (32, 32)
    assert seg.segment(np.dstack([frame(32, 32), np.full((32, 32), 255, np.uint8)])).shape == (32, 32)
    with pytest.raises(FrameError, match="empty"):
        seg.segment(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(FrameError, match="dtype"):
        seg.segment(np.zeros((8, 8, 3), np.float32))


def test_threshold_override_changes_the_mask(tiny):
    f = frame(64, 96)
    lo = open_model(tiny["dynamic"], threshold=0.05).segment(f).sum()
    hi = open_model(tiny["dynamic"], threshold=0.95).segment(f).sum()
    assert lo >= hi


def test_model_errors_are_clear(tmp_path, tiny):
    with pytest.raises(ModelError, match="not found"):
        open_model(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x01garbage" * 10)
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        open_model(corrupt)
    weird = tmp_path / "model.pt"
    weird.write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown model format"):
        open_model(weird)
    # a real ONNX model without the contract metadata
    import onnx

    proto = onnx.load(str(tiny["dynamic"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelError, match="no inference contract"):
        open_model(bare)
    with pytest.raises(ModelError, match="unknown backend"):
        open_model(tiny["dynamic"], backend="caffe")
