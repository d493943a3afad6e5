"""Hostile frames and image files: refused before they cost memory, skipped and counted, never fatal."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.imageio import ImageReadError, header_size, read_image
from edge_agent.video.capture import FrameCapture
from edge_agent.video.frame import frame_problem
from edge_agent.video.sources import ImageFolderSource, VideoFileSource


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    good = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    sof = good.index(b"\xff\xc0")
    return good[:sof + 5] + struct.pack(">HH", height, width) + good[sof + 9:]


def test_image_bombs_are_refused_from_their_header(tmp_path: Path):
    for name, data in [("bomb.png", png_declaring(20000, 15000)), ("big.jpg", jpeg_declaring(8000, 6000))]:
        path = tmp_path / name
        path.write_bytes(data)
        assert header_size(data) in ((20000, 15000), (8000, 6000))
        with pytest.raises(ImageReadError, match="Mpx is more than the limit"):
            read_image(path)


def test_a_folder_with_a_bomb_skips_it_and_goes_on(tmp_path: Path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"a{i}.png"), np.full((32, 48, 3), 100, np.uint8))
    (tmp_path / "a1_bomb.png").write_bytes(png_declaring(20000, 15000))
    (tmp_path / "a2_truncated.png").write_bytes(cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()[:60])
    with FrameCapture(ImageFolderSource(tmp_path), realtime=False, queue_policy="block") as cap:
        frames = list(cap.frames(timeout=10))
    assert len(frames) == 3 and cap.stats().corrupt_frames == 2 and cap.end is not None
    assert cap.end.reason == "ended"


def damaged_video(path: Path, frames: int = 60) -> Path:
    from edge_agent.video.synthetic import write_survey_video

    write_survey_video(path, frames, size=(320, 240), fps=10)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for start in (int(len(data) * 0.3), int(len(data) * 0.55), int(len(data) * 0.75)):
        data[start:start + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_video_is_read_to_its_real_end(tmp_path: Path):
    video = damaged_video(tmp_path / "damaged.mp4")
    raw = cv2.VideoCapture(str(video))
    readable = sum(raw.grab() for _ in range(200))  # what OpenCV itself reads, calling on after failures
    raw.release()
    with FrameCapture(VideoFileSource(video), realtime=False, queue_policy="block") as cap:
        frames = list(cap.frames(timeout=20))
    assert len(frames) == readable and readable > 40  # not the 13 frames up to the first damage
    assert cap.stats().corrupt_frames >= 1 and cap.end is not None and cap.end.reason == "ended"
    indices = [f.position_index for f in frames]
    assert indices == sorted(indices) and indices[-1] >= 55  # media time keeps the file's own numbering


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300),
                 st.sampled_from([".png", ".jpg", ".bmp", ".webp"]).flatmap(
                     lambda ext: st.integers(4, 300).map(
                         lambda cut: cv2.imencode(ext, np.full((40, 50, 3), 90, np.uint8))[1].tobytes()[:cut])),
                 st.tuples(st.integers(1, 60000), st.integers(1, 60000)).map(lambda wh: png_declaring(*wh))))
def test_any_file_bytes_read_or_refuse_cleanly(tmp_path: Path, data: bytes):
    path = tmp_path / "x.img"
    path.write_bytes(data)
    try:
        img = read_image(path)
    except ImageReadError:
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[0] * img.shape[1] <= 40_000_000


frame_shapes = st.one_of(
    st.tuples(st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 6)))


@settings(max_examples=1500, deadline=None)
@given(frame_shapes, st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int8, bool]))
def test_any_array_is_a_frame_or_a_reason(shape, dtype):
    from edge_agent.detectors.runtime import FrameError, as_bgr_frame

    arr = np.zeros(shape, dtype=dtype)
    problem = frame_problem(arr)
    try:
        bgr = as_bgr_frame(arr)
    except FrameError:
        # The segmenter refuses it: the capture check must refuse it too, with a reason.
        assert isinstance(problem, str) and problem, (shape, dtype)
        return
    # Whatever the segmenter accepts (grey, BGR, BGRA) becomes a frame the capture check accepts,
    # and a frame the capture check already accepts is handed on as it is.
    assert frame_problem(bgr) is None, (shape, dtype, frame_problem(bgr))
    assert bgr.dtype == np.uint8 and bgr.ndim == 3 and bgr.shape[2] == 3 and bgr.shape[:2] == arr.shape[:2]
    if problem is None:
        assert bgr is arr
    else:
        assert isinstance(problem, str) and problem


def test_the_pixel_limit_is_a_setting(tmp_path: Path):
    from edge_agent.config.loader import load_config
    from edge_agent.video.factory import capture_from_config

    for i in range(2):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((100, 200, 3), 100, np.uint8))
    (tmp_path / "cfg.yaml").write_text(f"camera: {{source: {tmp_path}, realtime: false, max_pixels: 10000}}\n")
    cfg = load_config(tmp_path / "cfg.yaml")
    with capture_from_config(cfg.camera) as cap:
        frames = list(cap.frames(timeout=10))
    assert frames == [] and cap.stats().corrupt_frames == 2  # 20,000 px each: over the 10,000 px limit
