"""The agent end to end with a known speed: frames skipped on purpose, coverage and distance in the summary."""

from __future__ import annotations

import pytest

from edge_agent.video.synthetic import write_survey_video
from tests.agent_run import agent, finish, write_config


def test_summary_counts_skips_and_coverage_at_a_known_speed(tmp_path, mosquitto, model_path):
    video = write_survey_video(tmp_path / "clip.mp4", 60, size=(160, 120), fps=30)
    # 120 rows at 3 mm/px = 0.36 m of road per frame; at 4 m/s frames are 0.133 m apart, so
    # with 10 % overlap (0.324 m allowed) every second frame is needed: 30 of 60
    cfg = write_config(tmp_path, model_path, str(video), mosquitto.url,
                       measurement={"gsd_mm_per_px": 3.0}, coverage={"speed_mps": 4.0, "overlap": 0.1},
                       camera={"source": str(video), "realtime": False, "queue_policy": "block"})
    summary = finish(agent(cfg))
    assert summary["frames"] + summary["frames_skipped_coverage"] == 60
    assert summary["frames"] == 30 and summary["frames_dropped"] == 0
    assert summary["coverage"] == pytest.approx(1.0)
    assert summary["driven_m"] == pytest.approx(59 / 30 * 4.0, rel=0.01)


def test_without_a_speed_every_frame_is_processed_and_coverage_is_unknown(tmp_path, mosquitto, model_path):
    video = write_survey_video(tmp_path / "clip.mp4", 20, size=(160, 120), fps=30)
    cfg = write_config(tmp_path, model_path, str(video), mosquitto.url)
    summary = finish(agent(cfg))
    assert summary["frames"] == 20 and summary["frames_skipped_coverage"] == 0
    assert summary["coverage"] is None and summary["driven_m"] is None
