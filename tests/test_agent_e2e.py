"""The agent end to end, as a separate process, against a real Mosquitto, a real model and real video.

What a survey vehicle lives through: a clip processed frame by frame, the broker dying and
coming back, the agent itself killed with SIGKILL, garbage on the command topics and in the
image stream. Every detection must arrive (duplicates only as repeated msg_id).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

from edge_agent.video.synthetic import write_image_folder, write_survey_video
from tests.agent_run import DEVICE, agent, finish, write_config
from tests.helpers import wait_until
from tests.schemas import validate_message


def detections_by_frame(sub) -> dict[int, list[dict]]:
    frames: dict[int, list[dict]] = {}
    for m in sub.matching(topic=f"crackseg/{DEVICE}/detections"):
        body = m.json()
        frames.setdefault(body["frame"]["index"], []).append(body)
    return frames


def test_video_in_every_frame_out_schema_valid(tmp_path, mosquitto, subscriber, model_path):
    video = write_survey_video(tmp_path / "clip.mp4", 15, size=(160, 120), fps=10)
    sub = subscriber(mosquitto.url, f"crackseg/{DEVICE}/#")
    cfg = write_config(tmp_path, model_path, str(video), mosquitto.url)
    summary = finish(agent(cfg, "--max-frames", "15"))
    assert summary["frames"] == 15 and summary["detections_published"] == 15
    assert summary["pending"] == 0 and summary["dropped"] == 0
    msgs = sub.wait_for(15, topic=f"crackseg/{DEVICE}/detections")
    for m in sub.matching():
        if not m.topic.endswith("/snapshots"):
            validate_message(m.topic, m.json())
    bodies = [m.json() for m in msgs]
    assert sorted(b["frame"]["index"] for b in bodies) == list(range(15))
    seqs = [b["seq"] for b in bodies]
    assert seqs == list(range(seqs[0], seqs[0] + 15))  # contiguous, in order
    assert len({b["msg_id"] for b in bodies}) == 15
    states = [m.json()["state"] for m in sub.matching(topic=f"crackseg/{DEVICE}/status")]
    assert states[0] == "online" and states[-1] == "stopped"


def test_broker_killed_and_restarted_mid_run_loses_nothing(tmp_path, mosquitto, subscriber, model_path):
    n = 40
    video = write_survey_video(tmp_path / "clip.mp4", n, size=(160, 120), fps=8)
    sub = subscriber(mosquitto.url, f"crackseg/{DEVICE}/detections", durable=True)
    cfg = write_config(tmp_path, model_path, str(video), mosquitto.url,
                       camera={"source": str(video), "realtime": True})
    proc = agent(cfg, "--max-frames", str(n))
    sub.wait_for(5, timeout=60, topic=f"crackseg/{DEVICE}/detections")
    mosquitto.wait_saved(time.time())
    mosquitto.restart(kill=True, down_s=float(os.environ.get("CRACKSEG_TEST_OUTAGE_S", "3")))
    summary = finish(proc)
    frames = wait_until(lambda: (lambda f: f if len(f) >= n else None)(detections_by_frame(sub)), 30,
                        lambda: f"all {n} frames; missing {sorted(set(range(n)) - set(detections_by_frame(sub)))}")
    assert sorted(frames) == list(range(n)), f"missing frames {sorted(set(range(n)) - set(frames))}"
    for copies in frames.values():  # a duplicate is the same message again, never a new one
        assert len({c["msg_id"] for c in copies}) == 1
    assert summary["pending"] == 0


def test_agent_killed_with_sigkill_delivers_persisted_detections_after_restart(tmp_path, make_broker, subscriber,
                                                                               model_path):
    broker = make_broker(start=False)  # not running yet (its port is reserved): everything queues in the outbox
    url = broker.url
    video = write_survey_video(tmp_path / "clip.mp4", 200, size=(160, 120), fps=10)
    cfg = write_config(tmp_path, model_path, str(video), url)
    proc = agent(cfg)
    outbox = tmp_path / "state" / "outbox.sqlite3"

    def queued_detections() -> int:
        assert proc.poll() is None, f"the agent exited with {proc.returncode}: {proc.stderr.read()[-2000:]}"
        if not outbox.exists():
            return 0
        with sqlite3.connect(outbox) as db:
            try:
                return db.execute("SELECT COUNT(*) FROM messages WHERE topic LIKE '%/detections'").fetchone()[0]
            except sqlite3.OperationalError:
                return 0  # the agent has not made the table yet

    wait_until(lambda: queued_detections() >= 8, 60,
               lambda: f"8 detections queued in the outbox (there are {queued_detections()})", interval=0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    with sqlite3.connect(outbox) as db:
        pending = db.execute("SELECT msg_id, seq FROM messages WHERE topic LIKE '%/detections' ORDER BY seq").fetchall()
    assert len(pending) >= 8
    broker.start()
    sub = subscriber(broker.url, f"crackseg/{DEVICE}/detections")
    short = write_survey_video(tmp_path / "one.mp4", 1, size=(160, 120), fps=10)
    summary = finish(agent(write_config(tmp_path, model_path, str(short), url), "--max-frames", "1"))
    assert summary["pending"] == 0
    got = sub.wait_for(len(pending) + 1, timeout=30)
    ids = {m.json()["msg_id"] for m in got}
    missing = [seq for msg_id, seq in pending if msg_id not in ids]
    assert not missing, f"persisted detections lost after SIGKILL: seq {missing}"
    seqs = sorted({m.json()["seq"] for m in got})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "the sequence continues across the restart"


def test_malformed_commands_and_corrupt_frames_never_stop_the_agent(tmp_path, mosquitto, subscriber, model_path):
    folder = tmp_path / "frames"
    write_image_folder(folder, 6, size=(160, 120))
    (folder / "img_0002.jpg").write_bytes(os.urandom(3000))  # corrupt JPEG in the stream
    (folder / "zz_empty.jpg").write_bytes(b"")
    cfg = write_config(tmp_path, model_path, str(folder), mosquitto.url,
                       camera={"source": str(folder), "loop": True, "realtime": True, "fps": 10})
    sub = subscriber(mosquitto.url, f"crackseg/{DEVICE}/#")
    proc = agent(cfg)
    try:
        sub.wait_for(3, timeout=60, topic=f"crackseg/{DEVICE}/detections")
        pub = sub.client
        base = f"crackseg/{DEVICE}/cmd/"
        sends = [("set-threshold", b"{not json"), ("set-threshold", b'{"id": "t1", "value": 7}'),
                 ("no-such-command", b"{}"), ("set-threshold", b"[1, 2]"), ("pause", b'{"id": "p"}'),
                 ("resume", b'{"id": "r"}'), ("set-threshold", b'{"id": "t2", "value": 0.6}'),
                 ("snapshot", b'{"id": "s"}'), ("status", b'{"id": "st"}')]
        for name, body in sends:
            pub.publish(base + name, body, qos=1)
        responses = sub.wait_for(len(sends), timeout=30, topic=f"crackseg/{DEVICE}/cmd/response")
        by_cmd = [r.json() for r in responses]
        for r in by_cmd:
            validate_message(f"crackseg/{DEVICE}/cmd/response", r)
        errors = [r for r in by_cmd if not r["ok"]]
        assert len(errors) == 4
        assert any("JSON" in r["error"] for r in errors)
        assert any("unknown command 'no-such-command'" in r["error"] for r in errors)
        assert any("outside" in r["error"] for r in errors)
        ok = {r["request_id"]: r for r in by_cmd if r["ok"]}
        assert ok["t2"]["result"]["threshold"] == 0.6
        sub.wait_for(1, timeout=30, topic=f"crackseg/{DEVICE}/snapshots")
        before = len(sub.matching(topic=f"crackseg/{DEVICE}/detections"))
        sub.wait_for(before + 3, timeout=60, topic=f"crackseg/{DEVICE}/detections")  # still processing
        health = sub.wait_for(1, timeout=30, topic=f"crackseg/{DEVICE}/health",
                              predicate=lambda m: m.json()["camera"]["corrupt_frames"] >= 1)[-1].json()
        validate_message(f"crackseg/{DEVICE}/health", health)
        assert health["model"]["threshold"] == 0.6
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["pending"] == 0
    assert sub.matching(topic=f"crackseg/{DEVICE}/status")[-1].json()["state"] == "stopped"


def test_bad_config_and_missing_model_fail_with_one_line(tmp_path, model_path):
    cfg = write_config(tmp_path, model_path, "/nonexistent/video.mp4", "mqtt://127.0.0.1:1")
    proc = agent(cfg, "--max-frames", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in err and "nonexistent" in err
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"not a model")
    video = write_survey_video(tmp_path / "clip.mp4", 2, size=(160, 120))
    cfg = write_config(tmp_path, bad_model, str(video), "mqtt://127.0.0.1:1")
    proc = agent(cfg, "--max-frames", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err and "bad.onnx" in err
