"""Speed-adaptive frame selection and coverage: the arithmetic, and the capture skipping frames before decoding."""

from __future__ import annotations

import pytest

from edge_agent.agent.coverage import (
    CoverageSettings,
    CoverageTracker,
    FrameSelector,
    footprint_m,
    frames_needed_per_s,
    max_speed_kmh,
)


def test_footprint_and_frames_needed_at_survey_speed():
    # 1280x720 at 1.6 mm/px, travel along the image's vertical axis: 720 rows -> 1.152 m of road
    footprint = footprint_m((720, 1280), 1.6, "vertical")
    assert footprint == pytest.approx(1.152)
    assert footprint_m((720, 1280), 1.6, "horizontal") == pytest.approx(2.048)
    # 50 km/h with 10 % overlap: the 13.4 fps of the issue
    assert frames_needed_per_s(50 / 3.6, footprint, 0.1) == pytest.approx(13.4, abs=0.05)
    assert max_speed_kmh(13.4, footprint, 0.1) == pytest.approx(50.0, abs=0.2)


def run(selector: FrameSelector, fps: float, seconds: float) -> list[tuple[float, float]]:
    """Offer frames at ``fps`` for ``seconds``; the (time, odometer) of the kept ones."""
    kept = []
    for k in range(int(fps * seconds)):
        t = k / fps
        keep, odo = selector.accept(t)
        if keep:
            kept.append((t, odo))
    return kept


def selector_at(speed: float | None, **kw) -> FrameSelector:
    sel = FrameSelector(CoverageSettings(gsd_along_mm=1.6, **kw), lambda t: speed)
    sel.set_frame_shape((720, 1280))
    return sel


@pytest.mark.parametrize("kmh", [10, 30, 50, 80])
def test_kept_frames_overlap_by_the_configured_share_and_no_more(kmh):
    v = kmh / 3.6
    sel = selector_at(v, overlap=0.1)
    kept = run(sel, 30.0, 20.0)
    gaps = [b[1] - a[1] for a, b in zip(kept, kept[1:])]
    footprint = 1.152
    assert max(gaps) <= footprint * 0.9 + 1e-9  # never a hole: every metre imaged
    # and not much denser than needed: at most one frame interval closer than the allowed spacing
    assert min(gaps) >= footprint * 0.9 - v / 30.0 - 1e-9
    # frames come 1/30 s apart: keeping every k-th frame, k = whole frame steps that fit in the spacing
    k = max(1, int(footprint * 0.9 / (v / 30.0)))
    assert len(kept) == pytest.approx(600 / k, rel=0.02, abs=1)
    tracker = CoverageTracker()
    for _, odo in kept:
        tracker.processed(odo, footprint)
    assert tracker.coverage(sel.odometer_m) == pytest.approx(1.0)


def test_a_stopped_vehicle_costs_one_frame_per_interval():
    sel = selector_at(0.0, stopped_interval_s=5.0)
    kept = run(sel, 30.0, 60.0)
    assert 12 <= len(kept) <= 13  # the first, then one every 5 s
    assert sel.skipped == 1800 - len(kept)


def test_unknown_speed_keeps_every_frame_and_reports_no_coverage():
    sel = selector_at(None)
    assert len(run(sel, 10.0, 3.0)) == 30
    assert not sel.speed_known
    fallback = selector_at(None, speed_mps=5.0)
    assert len(run(fallback, 30.0, 10.0)) < 100 and fallback.speed_known


def test_coverage_counts_holes_left_by_dropped_frames():
    footprint = 1.0
    tracker = CoverageTracker()
    for odo in [0.0, 0.9, 1.8, 4.0, 4.9]:  # 1.8 -> 4.0: frames lost, 1.2 m never imaged
        tracker.processed(odo, footprint)
    assert tracker.coverage(4.9) == pytest.approx((0.9 + 0.9 + 1.0 + 0.9) / 4.9)
    window = CoverageTracker()
    window.processed(0.0, footprint)
    window.processed(0.9, footprint)
    assert window.window(0.9) == pytest.approx(1.0)
    window.processed(3.0, footprint)
    assert window.window(3.0) == pytest.approx(1.0 / 2.1)


def test_capture_skips_unneeded_frames_before_decoding(tmp_path):
    from edge_agent.video.capture import FrameCapture
    from edge_agent.video.sources import VideoFileSource
    from edge_agent.video.synthetic import write_survey_video

    video = write_survey_video(tmp_path / "clip.mp4", 90, size=(320, 240), fps=30)
    # 240 rows at 2 mm/px = 0.48 m per frame; at 5 m/s frames are 0.167 m apart, so with 10 % overlap
    # (0.432 m allowed) every second frame is needed
    sel = FrameSelector(CoverageSettings(gsd_along_mm=2.0), lambda t: 5.0)
    with FrameCapture(VideoFileSource(str(video)), realtime=False, queue_policy="block", selector=sel) as cap:
        frames = list(cap.frames(timeout=10))
    stats = cap.stats()
    assert stats.frames_read == 90
    assert stats.frames_skipped_coverage == 90 - len(frames) == sel.skipped
    assert len(frames) == 45
    odometers = [f.odometer_m for f in frames]
    assert odometers == sorted(odometers) and odometers[-1] == pytest.approx(89 / 30 * 5.0, rel=0.05)
    assert max(b - a for a, b in zip(odometers, odometers[1:])) <= 0.48 * 0.9 + 1e-9


def test_two_inference_workers_report_every_frame_in_order(tmp_path, model_path):
    import queue

    from edge_agent.agent.pipeline import _END, InferenceStage, ModelSlot, Segmented
    from edge_agent.agent.stats import PipelineStats
    from edge_agent.detectors import open_model
    from edge_agent.video.capture import FrameCapture
    from edge_agent.video.sources import ImageFolderSource
    from edge_agent.video.synthetic import write_image_folder

    write_image_folder(tmp_path / "frames", 24, size=(96, 64))
    out: queue.Queue = queue.Queue(maxsize=4)
    stats = PipelineStats()
    slot = ModelSlot(open_model(model_path, threads=1))
    with FrameCapture(ImageFolderSource(str(tmp_path / "frames")), realtime=False, queue_policy="block") as cap:
        stage = InferenceStage(cap, slot, out, stats, on_frame_done=lambda: None, workers=2)
        stage.start()
        seen = []
        while (item := out.get(timeout=60)) is not _END:
            assert isinstance(item, Segmented)
            seen.append(item.frame.index)
        stage.join(10)
    assert seen == list(range(24))
    assert stats.snapshot()["inference_ms_p50"] is not None
    seg, clone = slot.for_worker(1)
    assert clone is not seg and clone.artifacts[0].backend is seg.artifacts[0].backend  # onnxruntime: shared
