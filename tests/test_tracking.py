"""Stable crack ids across frames (edge_agent.measure.tracking), on drawn and measured cracks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.config.measurement import MeasurementConfig
from edge_agent.measure import CrackMeasurer, CrackTracker

H, W = 720, 1280
GSD = 5.0          # mm per pixel
FPS = 10.0
SPEED = 10.0       # m/s -> 10 * 0.1 s * 1000 / 5 = 200 px per frame, more than the crack is tall


def frame_with(*cracks: tuple[int, int, int, int]) -> np.ndarray:
    """A mask with short transverse cracks given as (x0, y, x1, thickness)."""
    m = np.zeros((H, W), np.uint8)
    for x0, y, x1, t in cracks:
        cv2.line(m, (x0, y), (x1, y + 20), 255, t)
    return m


@pytest.fixture
def cfg() -> MeasurementConfig:
    return MeasurementConfig(gsd_mm_per_px=GSD, min_length_mm=100)


def run(tracker, measurer, masks, speeds, t0=0.0):
    out = []
    for i, (mask, speed) in enumerate(zip(masks, speeds)):
        out.append(tracker.update(t0 + i / FPS, measurer.measure(mask), speed))
    return out


def test_crack_moving_down_keeps_its_id(cfg):
    measurer, tracker = CrackMeasurer(cfg), CrackTracker(cfg, frame_shape=(H, W), run_id="van7")
    masks = [frame_with((300, 50 + 200 * i, 700, 3)) for i in range(3)]
    frames = run(tracker, measurer, masks, [SPEED] * 3)
    ids = [f[0].track_id for f in frames]
    assert ids[0] == ids[1] == ids[2]
    assert [f[0].is_new for f in frames] == [True, False, False]
    assert ids[0].startswith("van7-")


def test_without_motion_the_same_crack_would_look_new(cfg):
    # The same frames with a tracker that cannot predict the shift (no speed, nothing learned):
    # the boxes do not overlap, so it is the motion model that keeps the id above.
    measurer, tracker = CrackMeasurer(cfg), CrackTracker(cfg, frame_shape=(H, W))
    masks = [frame_with((300, 50 + 200 * i, 700, 3)) for i in range(2)]
    frames = run(tracker, measurer, masks, [None, None])
    assert frames[0][0].track_id != frames[1][0].track_id


def test_a_new_crack_gets_a_new_id(cfg):
    measurer, tracker = CrackMeasurer(cfg), CrackTracker(cfg, frame_shape=(H, W))
    masks = [frame_with((300, 50, 700, 3)),
             frame_with((300, 250, 700, 3), (800, 30, 1200, 3))]   # the old one moved, a new one entered
    first, second = run(tracker, measurer, masks, [SPEED, SPEED])
    by_x = {c.crack.bbox_px[0] // 100: c for c in second}
    assert by_x[2].track_id == first[0].track_id and not by_x[2].is_new
    assert by_x[7].is_new and by_x[7].track_id != first[0].track_id
    assert len({c.track_id for c in first + second}) == 2


def test_learned_image_speed_bridges_a_lost_gps_fix(cfg):
    measurer, tracker = CrackMeasurer(cfg), CrackTracker(cfg, frame_shape=(H, W))
    # A short crack fully inside the frame, measured with GPS speed, then the fix is lost.
    masks = [frame_with((300, 40 + 150 * i, 340, 3)) for i in range(4)]
    speed = 150 * FPS * GSD / 1000.0  # 150 px per frame
    frames = run(tracker, measurer, masks, [speed, speed, None, None])
    assert tracker.image_speed_px_s == pytest.approx(150 * FPS, rel=0.1)
    assert len({f[0].track_id for f in frames}) == 1


def test_tracks_end_when_out_of_view_and_report_their_longest_sighting(cfg):
    measurer, tracker = CrackMeasurer(cfg), CrackTracker(cfg, frame_shape=(H, W))
    # Entering at the top (cut by the frame edge), fully visible, then gone below the frame.
    m0 = frame_with((300, -10, 700, 3))
    m1 = frame_with((300, 190, 700, 3))
    m2 = np.zeros((H, W), np.uint8)
    m3 = np.zeros((H, W), np.uint8)
    m4 = np.zeros((H, W), np.uint8)
    frames = run(tracker, measurer, [m0, m1, m2, m3, m4], [SPEED] * 5)
    assert frames[0][0].track_id == frames[1][0].track_id
    finished = tracker.pop_finished()
    assert [t.track_id for t in finished] == [frames[0][0].track_id]
    assert finished[0].frames_seen == 2
    assert finished[0].best.length_mm >= frames[0][0].crack.length_mm
    assert not tracker.active
    assert tracker.pop_finished() == []


def test_a_track_survives_a_missed_detection(cfg):
    measurer, tracker = CrackMeasurer(cfg), CrackTracker(cfg, frame_shape=(H, W))
    masks = [frame_with((300, 50, 700, 3)), np.zeros((H, W), np.uint8), frame_with((300, 450, 700, 3))]
    frames = run(tracker, measurer, masks, [SPEED] * 3)
    assert frames[0][0].track_id == frames[2][0].track_id


def test_missed_frames_and_gaps_end_tracks():
    cfg = MeasurementConfig(gsd_mm_per_px=GSD, min_length_mm=100,
                            tracking={"max_missed_frames": 1, "max_gap_s": 1.0})
    measurer = CrackMeasurer(cfg)
    tracker = CrackTracker(cfg)  # no frame size: only the missed-frame and time limits apply
    crack = measurer.measure(frame_with((300, 300, 700, 3)))
    first = tracker.update(0.0, crack, 0.0)
    tracker.update(0.1, [], 0.0)
    tracker.update(0.2, [], 0.0)
    again = tracker.update(0.3, crack, 0.0)
    assert again[0].is_new and again[0].track_id != first[0].track_id
    later = tracker.update(5.0, crack, 0.0)  # parked for 4.7 s without a frame
    assert later[0].is_new


def test_ids_are_unique_per_run():
    cfg = MeasurementConfig(gsd_mm_per_px=GSD, min_length_mm=100, tracking={"enabled": False})
    crack = CrackMeasurer(cfg).measure(frame_with((300, 300, 700, 3)))
    a, b = CrackTracker(cfg), CrackTracker(cfg)
    ids_a = [a.update(i / FPS, crack, 0.0)[0].track_id for i in range(3)]
    ids_b = [b.update(i / FPS, crack, 0.0)[0].track_id for i in range(3)]
    assert len(set(ids_a)) == 3  # tracking off: every sighting is its own report
    assert not set(ids_a) & set(ids_b)


def test_camera_looking_backwards_moves_the_road_up(cfg):
    up = MeasurementConfig(gsd_mm_per_px=GSD, min_length_mm=100, tracking={"image_motion": "up"})
    measurer, tracker = CrackMeasurer(up), CrackTracker(up, frame_shape=(H, W))
    masks = [frame_with((300, 650 - 200 * i, 700, 3)) for i in range(3)]
    frames = run(tracker, measurer, masks, [SPEED] * 3)
    assert len({f[0].track_id for f in frames}) == 1
    # ... and the default direction (down) would not follow it.
    tracker = CrackTracker(cfg, frame_shape=(H, W))
    frames = run(tracker, CrackMeasurer(cfg), masks, [SPEED] * 3)
    assert len({f[0].track_id for f in frames}) == 3


def test_two_parallel_cracks_keep_their_own_ids(cfg):
    measurer, tracker = CrackMeasurer(cfg), CrackTracker(cfg, frame_shape=(H, W))
    masks = [frame_with((100, 50 + 200 * i, 500, 3), (700, 80 + 200 * i, 1100, 3)) for i in range(3)]
    frames = run(tracker, measurer, masks, [SPEED] * 3)
    for f in frames:
        assert len(f) == 2
    left = [next(c for c in f if c.crack.bbox_px[0] < 600).track_id for f in frames]
    right = [next(c for c in f if c.crack.bbox_px[0] >= 600).track_id for f in frames]
    assert len(set(left)) == 1 and len(set(right)) == 1 and left[0] != right[0]
