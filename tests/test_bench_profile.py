"""bench.profile_agent's arithmetic: py-spy's collapsed stacks into stages and ms per frame."""

from __future__ import annotations

import pytest

from bench.profile_agent import ORDER, leaf_function, parse_collapsed, stage_of, summarise

RAW = "\n".join([
    "thread (0x7F01);_find_and_load (<frozen importlib._bootstrap>:1176);<module> (edge_agent/cli.py:3) 40",
    "thread (0x7F02);run (edge_agent/agent/pipeline.py:88);probabilities (edge_agent/detectors/runtime.py:201);"
    "invoke (ai_edge_litert/interpreter.py:941) 300",
    "thread (0x7F03);run (edge_agent/agent/reporter.py:50);measure (edge_agent/measure/measurer.py:77);"
    "skeletonize (edge_agent/measure/skeleton.py:30) 100",
    "thread (0x7F03);run (edge_agent/agent/reporter.py:50);build (edge_agent/agent/reporter.py:90) 20",
    "thread (0x7F04);_send (edge_agent/comms/mqtt.py:200);publish (paho/mqtt/client.py:1500) 10",
    "thread (0x7F05);_read (edge_agent/video/capture.py:120);read (cv2/__init__.py:1) 30",
    "thread (0x7F06);something (numpy/core/fromnumeric.py:10) 0",
    "broken line without a count",
])


def test_parse_collapsed_reads_stacks_root_first_and_skips_garbage():
    samples = parse_collapsed(RAW)
    assert len(samples) == 7
    stack, n = samples[1]
    assert n == 300 and stack[0] == "thread (0x7F02)" and stack[-1].startswith("invoke (ai_edge_litert/")


@pytest.mark.parametrize("frames, stage", [
    (["run (edge_agent/agent/pipeline.py:1)", "probabilities (edge_agent/detectors/runtime.py:2)"], "inference"),
    # the innermost frame that names a stage wins: cv2 inside measure/ is measurement
    (["run (edge_agent/agent/reporter.py:1)", "measure (edge_agent/measure/m.py:2)", "dilate (cv2/x.py:3)"],
     "measurement"),
    (["run (edge_agent/agent/reporter.py:1)"], "report, health, other agent"),
    (["loop (paho/mqtt/client.py:1)"], "outbox + MQTT"),
    (["fix (edge_agent/position/gpsd.py:1)"], "position"),
    (["_find_and_load (<frozen importlib._bootstrap>:1)", "<module> (edge_agent/measure/m.py:1)"], "start-up"),
    (["sum (numpy/core/fromnumeric.py:10)"], "other"),
    ([], "other"),
])
def test_stage_of(frames, stage):
    assert stage_of(frames) == stage


def test_leaf_function_shortens_the_path():
    assert leaf_function(["a (x/y/edge_agent/measure/skeleton.py:30)"]) == "a (measure/skeleton.py)"
    assert leaf_function([]) == "?"


def test_summarise_shares_and_ms_per_frame():
    report = summarise(parse_collapsed(RAW), rate=100, frames=10)
    stages = {r["stage"]: r for r in report["stages"]}
    assert report["active_samples"] == 500
    assert stages["inference"]["samples"] == 300 and stages["inference"]["share"] == 0.6
    # 300 samples at 100 Hz over 10 frames = 3 s / 10 = 300 ms of one Python thread per frame
    assert stages["inference"]["ms_per_frame"] == 300.0
    assert stages["measurement"]["ms_per_frame"] == 100.0
    assert stages["start-up"]["samples"] == 40 and stages["capture + decode"]["samples"] == 30
    assert "other" not in stages  # a stage with no samples is left out
    assert [r["stage"] for r in report["stages"]] == [s for s in ORDER if s in stages]
    assert report["top"][0] == {"function": "invoke (ai_edge_litert/interpreter.py)", "samples": 300,
                                "ms_per_frame": 300.0}
