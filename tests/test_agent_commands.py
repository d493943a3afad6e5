"""The agent's own commands and start-up order, in process, against a real broker and the shipped model.

Each test here pins a behaviour an operator relies on: a threshold change shows in the messages
whose masks it made, a config reload does not report the cracks in view again as new, a second
agent on the same host fails before it can touch the broker, and reporting failures reach the
summary and the exit status.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_agent.agent.app import Agent
from edge_agent.config.loader import load_config
from edge_agent.video.synthetic import survey_frames
from tests import agent_run

DEVICE = "van-cmd"


def write_survey_folder(folder: Path, n: int, size=(480, 320)) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i, (frame, _) in enumerate(survey_frames(n, size=size, seed=3, speed_px=12)):
        cv2.imwrite(str(folder / f"f_{i:04d}.png"), frame)
    return folder


def write_config(tmp: Path, source: Path, url: str, **sections) -> Path:
    defaults = {"camera": {"source": str(source), "fps": 8, "realtime": True},
                "measurement": {"gsd_mm_per_px": 1.0, "min_length_mm": 20}}
    for key, value in defaults.items():
        sections[key] = {**value, **sections.get(key, {})}
    return agent_run.write_config(tmp, None, str(source), url, device=DEVICE, **sections)


def command(sub, name: str, body: dict) -> dict:
    """Publish a command and return its answer."""
    rid = f"{name}-{len(sub.messages)}"
    sub.client.publish(f"crackseg/{DEVICE}/cmd/{name}", json.dumps({**body, "request_id": rid}), qos=1)
    answers = sub.wait_for(1, timeout=20, topic=f"crackseg/{DEVICE}/cmd/response",
                           predicate=lambda m: m.json().get("request_id") == rid)
    return answers[0].json()


@pytest.fixture
def running(tmp_path, mosquitto, subscriber):
    """Start an in-process agent on a paced survey folder; yields (agent, subscriber, config path)."""
    started: list[Agent] = []

    def start(n_frames: int = 40, **sections):
        source = write_survey_folder(tmp_path / "frames", n_frames)
        path = write_config(tmp_path, source, mosquitto.url, **sections)
        sub = subscriber(mosquitto.url, f"crackseg/{DEVICE}/#")
        agent = Agent(load_config(path), config_path=path)
        agent.start()
        started.append(agent)
        return agent, sub, path

    yield start
    for agent in started:
        agent.request_stop()
        agent.shutdown()


def detections(sub) -> list[dict]:
    return sorted((m.json() for m in sub.matching(topic=f"crackseg/{DEVICE}/detections")),
                  key=lambda b: b["frame"]["index"])


def test_set_threshold_shows_in_the_messages_whose_masks_it_made(running):
    agent, sub, _ = running(40)
    sub.wait_for(3, timeout=60, topic=f"crackseg/{DEVICE}/detections")
    first = detections(sub)[0]["model"]["threshold"]
    answer = command(sub, "set-threshold", {"value": 0.91})
    assert answer["ok"] and answer["result"] == {"threshold": 0.91, "previous": first}
    agent.wait()
    thresholds = [b["model"]["threshold"] for b in detections(sub)]
    assert thresholds[0] == first and thresholds[-1] == 0.91
    switch = thresholds.index(0.91)
    assert set(thresholds[switch:]) == {0.91}  # every later message, never the load-time value


def test_reload_config_keeps_track_ids_when_measurement_is_unchanged(running, tmp_path):
    agent, sub, path = running(48)
    sub.wait_for(6, timeout=60, topic=f"crackseg/{DEVICE}/detections",
                 predicate=lambda m: m.json()["crack_count"] > 0)
    cfg = yaml.safe_load(path.read_text())
    cfg["reporting"]["max_cracks_per_message"] = 150  # a reporting change only
    path.write_text(yaml.safe_dump(cfg))
    answer = command(sub, "reload-config", {})
    assert answer["ok"] and answer["result"]["applied"] == ["reporting"], answer
    agent.wait()
    first_sightings: dict[str, int] = {}
    for body in detections(sub):
        for crack in body["cracks"]:
            if crack["first_sighting"]:
                first_sightings[crack["track_id"]] = first_sightings.get(crack["track_id"], 0) + 1
    assert first_sightings, "the model found no crack on the survey frames"
    reported_twice = {k: v for k, v in first_sightings.items() if v > 1}
    assert reported_twice == {}, f"cracks reported as new again after the reload: {reported_twice}"


def test_second_agent_on_the_same_port_fails_before_touching_the_broker(tmp_path, mosquitto, subscriber):
    source = write_survey_folder(tmp_path / "frames", 400)
    path = write_config(tmp_path, source, mosquitto.url, http={"enabled": True, "host": "127.0.0.1", "port": 0},
                        camera={"source": str(source), "fps": 2, "realtime": True})
    status = subscriber(mosquitto.url, f"crackseg/{DEVICE}/status")
    first = Agent(load_config(path), config_path=path)
    first.start()
    try:
        status.wait_for(1, timeout=20, predicate=lambda m: m.json()["state"] == "online")
        second_cfg = yaml.safe_load(path.read_text())
        second_cfg["state_dir"] = str(tmp_path / "state2")
        assert first.http is not None
        second_cfg["http"]["port"] = first.http.port
        second_path = tmp_path / "second.yaml"
        second_path.write_text(yaml.safe_dump(second_cfg))
        proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(second_path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "cannot listen" in proc.stderr, proc.stderr[-2000:]
        # the running agent's retained status is still its own "online": the second one never connected
        fresh = subscriber(mosquitto.url, f"crackseg/{DEVICE}/status")
        retained = fresh.wait_for(1, timeout=10)[0]
        assert retained.retain and retained.json()["state"] == "online"
        assert [m.json()["state"] for m in status.matching()] == ["online"]
    finally:
        first.request_stop()
        first.shutdown()


def test_reporting_failures_show_in_summary_and_exit_status(tmp_path, mosquitto, monkeypatch, capsys):
    from edge_agent import cli
    from edge_agent.measure.cracks import CrackMeasurer

    def broken(self, mask, probability=None):  # noqa: ANN001 - CrackMeasurer.measure's signature
        raise RuntimeError("measurement exploded")

    monkeypatch.setattr(CrackMeasurer, "measure", broken)
    source = write_survey_folder(tmp_path / "frames", 6)
    path = write_config(tmp_path, source, mosquitto.url, camera={"source": str(source), "realtime": False})
    rc = cli.main(["run", "--config", str(path), "--max-frames", "6"])
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert rc == 1 and "could not be reported" in out.err
    assert summary["report_errors"] == 6 and summary["frames"] == 6


def test_config_log_level_reaches_the_log_without_a_flag(tmp_path, mosquitto):
    source = write_survey_folder(tmp_path / "frames", 2)
    path = write_config(tmp_path, source, mosquitto.url, camera={"source": str(source), "realtime": False},
                        logging={"level": "INFO"})
    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(path), "--max-frames", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert " INFO " in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(path), "--max-frames", "2"],
                           capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                              "LOG_LEVEL": "debug"})
    assert debug.returncode == 0 and " DEBUG " in debug.stderr
