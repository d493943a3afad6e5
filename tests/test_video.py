"""Frame sources and the capture loop, on real generated media: video files, image folders and a loopback
HTTP MJPEG camera that is frozen, killed and restarted."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.config.camera import CameraConfig
from edge_agent.video import (
    CaptureState,
    EndOfStream,
    FrameCapture,
    FrameRateLimiter,
    GStreamerSource,
    SourceNotFoundError,
    SourceOpenError,
    SourceSpecError,
    StreamSource,
    VideoBackendUnavailableError,
    backend_available,
    capture_from_config,
    iso_utc,
    jetson_csi_pipeline,
    libcamera_pipeline,
    make_source,
    parse_source,
)
from edge_agent.video.frame import frame_problem
from edge_agent.video.framequeue import FrameQueue
from edge_agent.video.pipelines import gst_framerate
from tests.helpers import PortReservation, thread_stack, wait_until
from tests.media import (
    MjpegServer,
    make_pavement,
    survey_frames,
    write_garbage,
    write_image_folder,
    write_survey_video,
)

pytestmark = pytest.mark.timeout(60)

SIZE = (96, 64)  # (width, height)


def offline(source: str, **kw) -> CameraConfig:
    """Files as fast as possible and lossless (what an evaluation run uses)."""
    return CameraConfig(source=source, realtime=False, queue_policy="block", **kw)


def live(url: str, **kw) -> CameraConfig:
    kw = {"stall_timeout_s": 0.4, "reconnect_backoff_min_s": 0.1, "reconnect_backoff_max_s": 0.4, **kw}
    return CameraConfig(source=url, **kw)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_survey_video(tmp_path_factory.mktemp("video") / "survey.mp4", 30, SIZE, fps=25, seed=3)


@pytest.fixture
def server():
    srv = MjpegServer(SIZE, fps=25).start()
    yield srv
    srv.stop()


# -- generated media ----------------------------------------------------------------------------------------

def test_make_pavement_is_deterministic_with_exact_crack_masks():
    img, mask = make_pavement(64, 96, seed=5, n_cracks=2, crack_width=3)
    again, mask_again = make_pavement(64, 96, seed=5, n_cracks=2, crack_width=3)
    other, _ = make_pavement(64, 96, seed=6, n_cracks=2, crack_width=3)
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8 and mask.shape == (64, 96)
    assert np.array_equal(img, again) and np.array_equal(mask, mask_again)
    assert not np.array_equal(img, other)
    assert set(np.unique(mask)) == {0, 255}
    assert img[mask > 0].mean() < img[mask == 0].mean() - 30  # cracks are dark
    thin = (make_pavement(200, 200, seed=1, n_cracks=2, crack_width=1)[1] > 0).sum()
    wide = (make_pavement(200, 200, seed=1, n_cracks=2, crack_width=5)[1] > 0).sum()
    assert wide > 3 * thin  # the width parameter is the drawn width


def test_survey_video_scrolls_and_reads_back(clip):
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while (ok_img := cap.read())[0]:
        frames.append(ok_img[1].astype(np.float32))
    cap.release()
    assert len(frames) == 30 and frames[0].shape == (64, 96, 3)
    # The road moves down the picture by 4 px per frame (the vehicle drives forward).
    a, b = frames[10], frames[11]
    shifted = np.abs(b[4:] - a[:-4]).mean()
    still = np.abs(b - a).mean()
    assert shifted < still / 2
    truth = [f for f, _ in survey_frames(30, SIZE, seed=3)]
    assert np.abs(frames[5] - truth[5]).mean() < 8  # lossy codec, same picture


# -- files and folders ----------------------------------------------------------------------------------------

def test_file_source_delivers_every_frame_in_order(clip):
    cfg = offline(str(clip), queue_size=2)
    with capture_from_config(cfg) as cap:
        frames = list(cap)
        assert cap.state == CaptureState.ENDED
        assert cap.end == EndOfStream("ended")
        assert isinstance(cap.get(0.1), EndOfStream)  # the end marker stays
        stats = cap.stats()
    assert [f.index for f in frames] == list(range(30))
    assert [f.position_index for f in frames] == list(range(30))
    assert [f.position_s for f in frames] == pytest.approx([i / 25 for i in range(30)])
    assert all(f.image.shape == (64, 96, 3) and f.image.dtype == np.uint8 for f in frames)
    mono = [f.monotonic_ts for f in frames]
    wall = [f.capture_ts for f in frames]
    assert all(b > a for a, b in zip(mono, mono[1:]))
    assert all(b >= a for a, b in zip(wall, wall[1:]))
    assert abs(wall[0] - time.time()) < 60
    assert frames[0].source == str(clip)
    assert (stats.frames_read, stats.frames_captured, stats.frames_dropped) == (30, 30, 0)
    assert stats.state == "ended" and stats.reconnects == 0


def test_looped_file_wraps_around_and_keeps_counting(clip):
    with capture_from_config(offline(str(clip), loop=True)) as cap:
        frames = [cap.get(5) for _ in range(70)]
    assert cap.end == EndOfStream("stopped")
    assert [f.index for f in frames] == list(range(70))
    assert [f.position_index for f in frames] == [i % 30 for i in range(70)]
    assert [f.loop for f in frames] == [i // 30 for i in range(70)]


def test_image_folder_skips_corrupt_files_and_counts_them(tmp_path):
    paths = write_image_folder(tmp_path, 5, SIZE, seed=2)
    write_garbage(tmp_path / "img_0002b.jpg")  # garbage bytes named .jpg
    (tmp_path / "img_0004z.png").write_bytes(b"")  # empty file
    (tmp_path / "notes.txt").write_text("not an image")
    with capture_from_config(offline(str(tmp_path))) as cap:
        frames = list(cap)
        stats = cap.stats()
    assert [f.path for f in frames] == [str(p) for p in paths]
    assert [f.index for f in frames] == list(range(5))
    assert stats.corrupt_frames == 2 and stats.frames_read == 7
    assert cap.end == EndOfStream("ended")
    assert np.array_equal(frames[3].image, cv2.imread(str(paths[3])))
    masks = sorted((tmp_path / "masks").iterdir())
    assert len(masks) == 5 and cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE).shape == (64, 96)


@pytest.mark.parametrize("fps,expected_every", [(5, 5), (12.5, 2), (25, 1), (100, 1)])
def test_target_fps_on_a_file_keeps_every_nth_frame(tmp_path, fps, expected_every):
    video = write_survey_video(tmp_path / "fifty.avi", 50, SIZE, fps=25, seed=1)
    with capture_from_config(offline(str(video), fps=fps)) as cap:
        frames = list(cap)
        stats = cap.stats()
    assert [f.position_index for f in frames] == list(range(0, 50, expected_every))
    assert stats.frames_skipped == 50 - len(frames)


def test_rate_limiter_holds_the_target_rate_despite_jitter():
    rng = np.random.default_rng(0)
    times = np.arange(300) / 30 + rng.normal(0, 0.003, 300)  # a 30 fps camera, 10 s
    limiter = FrameRateLimiter(10)
    kept = [t for t in times if limiter.accept(float(t))]
    assert 98 <= len(kept) <= 101
    assert np.diff(kept).min() > 0.05
    unlimited = FrameRateLimiter(None)
    assert all(unlimited.accept(float(t)) for t in times)


def test_realtime_file_is_paced_at_the_file_rate(clip):
    with capture_from_config(CameraConfig(source=str(clip), realtime=True, queue_policy="block")) as cap:
        frames = [cap.get(5) for _ in range(15)]
    span = frames[-1].monotonic_ts - frames[0].monotonic_ts
    assert span >= 14 / 25 - 0.01  # never faster than the file (a lower bound: cannot flake when slow)
    assert frames[-1].capture_ts - frames[0].capture_ts >= 14 / 25 - 0.05


def test_slow_consumer_gets_the_freshest_frames(clip):
    cfg = CameraConfig(source=str(clip), realtime=False, queue_policy="drop_oldest", queue_size=3)
    with capture_from_config(cfg) as cap:
        assert wait_until(lambda: cap.state == CaptureState.ENDED)
        frames = list(cap)
        stats = cap.stats()
    assert [f.position_index for f in frames] == [27, 28, 29]
    assert [f.index for f in frames] == [27, 28, 29]
    assert stats.frames_dropped == 27 and stats.frames_captured == 30


def test_frame_queue_policies():
    q: FrameQueue[int] = FrameQueue(2, "drop_oldest")
    assert q.put(1) == (True, 0) and q.put(2) == (True, 0)
    assert q.put(3) == (True, 1)
    q.put_final(99)  # beyond the bound, never dropped
    assert [q.get(0), q.get(0), q.get(0), q.get(0)] == [2, 3, 99, None]

    b: FrameQueue[int] = FrameQueue(1, "block")
    b.put(1)
    cancel = threading.Event()
    result = {}
    t = threading.Thread(target=lambda: result.update(r=b.put(2, cancelled=cancel.is_set)))
    t.start()
    wait_until(lambda: thread_stack(t)[:2] == ["wait", "put"], what="put() to wait for room")
    assert t.is_alive() and "r" not in result
    assert b.get(0) == 1
    t.join(2)
    assert result["r"] == (True, 0) and b.get(0) == 2
    b.put(3)
    t = threading.Thread(target=lambda: result.update(r=b.put(4, cancelled=cancel.is_set)))
    t.start()
    cancel.set()
    t.join(2)
    assert result["r"] == (False, 0) and len(b) == 1


# -- live streams: throttling, stalls, reconnects, stop -----------------------------------------------------

def test_target_fps_on_a_live_stream(tmp_path):
    with MjpegServer(SIZE, fps=40) as srv, capture_from_config(live(srv.url, fps=10)) as cap:
        first = cap.get(10)
        assert first is not None
        frames = [f for f in (cap.get(5) for _ in range(12)) if f is not None]
        stats = cap.stats()
    assert len(frames) == 12
    assert stats.frames_skipped > 0 and stats.frames_captured < 0.6 * stats.frames_read
    gaps = np.diff([f.monotonic_ts for f in frames])
    assert np.median(gaps) > 0.07  # 10 fps: kept frames at least ~a period apart


def test_stall_watchdog_reopens_a_frozen_stream(server):
    with capture_from_config(live(server.url)) as cap:
        before = [cap.get(10) for _ in range(5)]
        assert all(f is not None for f in before) and cap.state == CaptureState.STREAMING
        server.stall()  # connection stays open, no more data: the read blocks
        assert wait_until(lambda: cap.stats().stalls >= 1)
        stats = cap.stats()
        assert stats.state in ("stalled", "reconnecting")
        assert stats.abandoned_readers >= 1  # the blocked reader was left behind, not waited for
        assert "no frame" in stats.last_error
        server.resume()
        newest = before[-1].index
        assert wait_until(lambda: (f := cap.get(0.5)) is not None and f.index > newest + 3
                          and cap.state == CaptureState.STREAMING)
        stats = cap.stats()
    assert stats.reconnects >= 1 and server.connections >= 2


def test_reconnects_after_the_camera_goes_away_and_comes_back(server):
    with capture_from_config(live(server.url)) as cap:
        assert cap.get(10) is not None
        server.stop()  # camera off: connection closed, port refused
        assert wait_until(lambda: cap.stats().open_failures >= 1)
        stats = cap.stats()
        assert stats.state == "reconnecting" and stats.read_errors + stats.stalls >= 1
        newest = stats.frames_captured
        server.start()  # same port
        assert wait_until(lambda: cap.stats().frames_captured > newest + 3 and cap.state == CaptureState.STREAMING)
        assert cap.stats().reconnects >= 2


def test_looped_folder_that_disappears_is_reopened_when_it_is_back(tmp_path):
    folder = tmp_path / "frames"
    write_image_folder(folder, 3, SIZE, seed=4)
    cfg = CameraConfig(source=str(folder), loop=True, fps=50, stall_timeout_s=0.4, reconnect_backoff_min_s=0.05,
                       reconnect_backoff_max_s=0.2)
    with capture_from_config(cfg) as cap:
        assert cap.get(10) is not None
        folder.rename(tmp_path / "away")  # e.g. the USB stick was pulled
        assert wait_until(lambda: cap.stats().open_failures >= 2)
        stats = cap.stats()
        assert stats.state == "reconnecting" and "no such file or folder" in stats.last_error
        captured = stats.frames_captured
        (tmp_path / "away").rename(folder)
        assert wait_until(lambda: cap.stats().frames_captured > captured + 3)
        assert cap.state == CaptureState.STREAMING and cap.stats().reconnects >= 2


def test_gives_up_after_max_reconnect_attempts():
    with PortReservation() as nobody:  # a port nobody listens on (and nobody can take meanwhile)
        cfg = live(f"http://127.0.0.1:{nobody.port}/video.mjpg", max_reconnect_attempts=2,
                   reconnect_backoff_min_s=0.05)
        with capture_from_config(cfg) as cap:
            assert wait_until(lambda: cap.end is not None)
            assert isinstance(cap.get(1), EndOfStream)
            stats = cap.stats()
    assert cap.end.reason == "failed" and "could not open stream" in cap.end.error
    assert stats.state == "failed" and stats.open_failures == 3 and stats.reconnects == 2


def test_stop_returns_promptly_even_when_the_read_blocks(server, caplog):
    source = StreamSource(server.url, read_timeout_s=30)
    cap = FrameCapture(source, stall_timeout_s=30).start()
    assert cap.get(10) is not None
    server.stall()
    reader = wait_until(lambda: next((t for t in threading.enumerate() if t.name.startswith("capture-reader-")),
                                     None), what="the reader thread")
    # Blocked in FFmpeg's read (up to 30 s): it has every frame the camera sent but the last, which FFmpeg
    # holds until the next part's boundary, which never comes, and it is inside grab().
    wait_until(lambda: cap.stats().frames_read >= server.frames_sent - 1 and thread_stack(reader)[:1] == ["grab"],
               what="the reader to block in its read")
    waiter: dict = {}
    consumer = threading.Thread(target=lambda: waiter.update(item=[cap.get(5) for _ in range(20)][-1]))
    consumer.start()
    wait_until(lambda: thread_stack(consumer)[:3] == ["wait", "get", "get"], what="the consumer to wait in get()")
    cap.stop(timeout=2)
    # stop() did not wait for the read: the reader is still blocked in it, left behind, ...
    assert thread_stack(reader)[:1] == ["grab"] and cap.stats().abandoned_readers == 1
    # ... and the capture thread ended within stop's timeout (stop() logs it when it does not)
    assert not [r for r in caplog.records if "did not stop within" in r.getMessage()]
    consumer.join(5)
    assert waiter["item"] == EndOfStream("stopped")  # a consumer waiting in get() is woken up
    assert cap.state == CaptureState.ENDED


# -- source strings, config and errors ----------------------------------------------------------------------

def test_parse_source_guesses_the_kind(tmp_path, clip):
    assert (parse_source("0").kind, parse_source("0").target) == ("v4l2", 0)
    assert (parse_source("/dev/video2").kind, parse_source("/dev/video2").target) == ("v4l2", "/dev/video2")
    assert parse_source("rtsp://cam.local:554/stream1").kind == "stream"
    assert parse_source("https://cam/video.mjpg").kind == "stream"
    assert parse_source("gst:videotestsrc ! appsink").target == "videotestsrc ! appsink"
    assert parse_source("videotestsrc ! videoconvert ! appsink").kind == "gstreamer"
    assert (parse_source("jetson-csi:1").preset, parse_source("jetson-csi:1").target) == ("jetson-csi", "1")
    assert parse_source("libcamera").preset == "libcamera"
    assert (parse_source(str(tmp_path)).kind, parse_source(str(clip)).kind) == ("folder", "file")
    assert parse_source(str(clip), kind="folder").kind == "folder"  # explicit kind wins
    with pytest.raises(SourceNotFoundError, match="no such file, folder or device.*camera index"):
        parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceSpecError, match="unsupported URL scheme 'ftp'"):
        parse_source("ftp://host/x.mp4")
    with pytest.raises(SourceSpecError, match="empty"):
        parse_source("  ")


def test_bad_sources_fail_at_start_with_clear_errors(tmp_path):
    missing = next(f"/dev/video{n}" for n in range(99, 200) if not os.path.exists(f"/dev/video{n}"))
    cap = capture_from_config(CameraConfig(source=missing))
    with pytest.raises(SourceNotFoundError, match=f"camera {missing} not found.*v4l2-ctl"):
        cap.start()
    assert cap.state == CaptureState.FAILED and missing in cap.stats().last_error

    not_video = write_garbage(tmp_path / "broken.mp4")
    with pytest.raises(SourceSpecError, match="not a video OpenCV can read"):
        capture_from_config(CameraConfig(source=str(not_video))).start()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceOpenError, match="no images"):
        capture_from_config(CameraConfig(source=str(empty))).start()

    with pytest.raises(SourceSpecError, match="must end in '! appsink'"):
        capture_from_config(CameraConfig(source="videotestsrc ! fakesink", kind="gstreamer")).start()


@pytest.mark.skipif(backend_available(cv2.CAP_GSTREAMER), reason="this OpenCV has GStreamer")
def test_gstreamer_without_backend_says_what_to_install():
    cap = capture_from_config(CameraConfig(source="jetson-csi", width=640, height=480))
    with pytest.raises(VideoBackendUnavailableError, match="without GStreamer.*python3-opencv"):
        cap.start()


def test_pipeline_builders():
    jetson = jetson_csi_pipeline(640, 480, 30, sensor_id=1, flip_method=2)
    assert jetson.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=640, height=480")
    assert "framerate=30/1" in jetson and "nvvidconv flip-method=2" in jetson
    assert jetson.endswith("video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")
    pi = libcamera_pipeline(1280, 720, 15)
    assert pi.startswith("libcamerasrc ! video/x-raw, width=1280, height=720, framerate=15/1 ! videoconvert")
    assert gst_framerate(29.97) == "30000/1001"
    src = make_source(CameraConfig(source="jetson-csi:1", width=640, height=480, camera_fps=30))
    assert isinstance(src, GStreamerSource) and src.pipeline == jetson_csi_pipeline(640, 480, 30, sensor_id=1)
    with pytest.raises(SourceSpecError, match="sensor number"):
        make_source(CameraConfig(source="jetson-csi:left"))


def test_stream_names_hide_passwords():
    src = make_source(CameraConfig(source="rtsp://admin:s3cret@10.0.0.5:554/h264"))
    assert src.name == "rtsp://admin:***@10.0.0.5:554/h264"
    assert "rtsp_transport;tcp" in src.ffmpeg_options


def test_camera_config_validation():
    cfg = CameraConfig(source="0", width=1280, height=720, fourcc="MJPG", fps=10)
    assert cfg.queue_policy == "drop_oldest" and cfg.stall_timeout_s == 5.0
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CameraConfig(source="0", framerate=10)
    with pytest.raises(ValidationError, match="fourcc must be 4"):
        CameraConfig(source="0", fourcc="MJPEG")
    with pytest.raises(ValidationError, match="both width and height"):
        CameraConfig(source="0", width=640)
    with pytest.raises(ValidationError, match="reconnect_backoff_min_s"):
        CameraConfig(source="0", reconnect_backoff_min_s=10, reconnect_backoff_max_s=1)
    with pytest.raises(ValidationError):
        CameraConfig(source="0", kind="usb")


def test_frame_timestamps_and_validation(clip):
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    with capture_from_config(offline(str(clip))) as cap:
        frame = cap.get(5)
    parsed = datetime.fromisoformat(frame.capture_iso)
    assert frame.capture_iso.endswith("Z") and abs(parsed.timestamp() - frame.capture_ts) < 0.001
    assert frame.capture_time.tzinfo is not None and (frame.width, frame.height) == SIZE
    assert frame_problem(frame.image) is None
    assert frame_problem(None) == "no image"
    assert "uint8" in frame_problem(np.zeros((4, 4, 3), np.float32))
    assert "HxWx3" in frame_problem(np.zeros((4, 4), np.uint8))
    assert "HxWx3" in frame_problem(np.zeros((4, 4, 4), np.uint8))
    assert frame_problem(np.zeros((0, 4, 3), np.uint8)) == "empty image"
