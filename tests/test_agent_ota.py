"""Over-the-air updates through the running agent: a signed bundle sent by command becomes the
active model and is reported; a tampered one is refused while the old model keeps running; a
model that fails on road frames is rolled back automatically and the rollback is reported."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest

from edge_agent.video.synthetic import write_image_folder
from tests.agent_run import DEVICE, agent, write_config
from tests.bundles import (
    SERVICE_HW,
    build_archive,
    flip_byte,
    make_keys,
    sha256_of,
    tiny_onnx,
)


def events(sub, predicate=None):
    out = []
    for m in sub.matching(topic=f"crackseg/{DEVICE}/cmd/response"):
        body = m.json()
        if "event" in body and (predicate is None or predicate(body["event"])):
            out.append(body["event"])
    return out


@pytest.mark.slow
def test_update_by_command_then_tampered_then_failing_model_rolls_back(tmp_path, mosquitto, subscriber):
    key, public = make_keys(tmp_path / "keys")
    good = build_archive(tmp_path, "2.0.0", key=key, onnx=tiny_onnx(2))
    tampered = tmp_path / "tampered.tar.gz"
    shutil.copy(build_archive(tmp_path, "2.1.0", key=key, onnx=tiny_onnx(3)), tampered)
    tampered_sha = sha256_of(tampered)
    flip_byte(tampered)
    failing = build_archive(tmp_path, "3.0.0", key=key, onnx=tiny_onnx(0, fixed_reshape=True))

    h, w = SERVICE_HW
    folder = tmp_path / "frames"
    write_image_folder(folder, 8, size=(w, h))
    cfg = write_config(tmp_path, tiny_onnx(5), str(folder), mosquitto.url,
                       model={"path": str(tiny_onnx(5)), "threads": 1, "public_key_file": str(public),
                              "require_signature": True},
                       camera={"source": str(folder), "loop": True, "realtime": True, "fps": 10},
                       updates={"enabled": True, "watch_window_s": 6.0, "fps_settle_s": 3.0,
                                "allowed_url_schemes": ["file"], "file_root": str(tmp_path)},
                       reporting={"every_frame": True})
    sub = subscriber(mosquitto.url, f"crackseg/{DEVICE}/#")
    proc = agent(cfg)
    cmd = f"crackseg/{DEVICE}/cmd/model-update"
    try:
        sub.wait_for(3, timeout=60, topic=f"crackseg/{DEVICE}/detections")
        sub.client.publish(cmd, json.dumps({"id": "u1", "url": good.as_uri(), "sha256": sha256_of(good)}), qos=1)
        sub.wait_for(1, timeout=90, topic=f"crackseg/{DEVICE}/status",
                     predicate=lambda m: m.json().get("model", {}).get("version") == "2.0.0")
        sub.wait_for(1, timeout=60, topic=f"crackseg/{DEVICE}/detections",
                     predicate=lambda m: m.json()["model"]["version"] == "2.0.0")
        stages = [e["stage"] for e in events(sub)]
        assert "watching" in stages
        sub.wait_for(1, timeout=60, topic=f"crackseg/{DEVICE}/cmd/response",
                     predicate=lambda m: m.json().get("event", {}).get("stage") == "active")

        sub.client.publish(cmd, json.dumps({"id": "u2", "url": tampered.as_uri(), "sha256": tampered_sha}), qos=1)
        refused = sub.wait_for(1, timeout=60, topic=f"crackseg/{DEVICE}/cmd/response",
                               predicate=lambda m: m.json().get("event", {}).get("stage") == "failed"
                               or (m.json().get("request_id") == "u2" and m.json().get("ok") is False))
        assert "sha256" in json.dumps(refused[-1].json())
        before = len(sub.matching(topic=f"crackseg/{DEVICE}/detections"))
        got = sub.wait_for(before + 2, timeout=60, topic=f"crackseg/{DEVICE}/detections")
        assert got[-1].json()["model"]["version"] == "2.0.0"  # the running model kept running

        sub.client.publish(cmd, json.dumps({"id": "u3", "url": failing.as_uri(), "sha256": sha256_of(failing)}),
                           qos=1)
        rolled = sub.wait_for(1, timeout=90, topic=f"crackseg/{DEVICE}/cmd/response",
                              predicate=lambda m: m.json().get("event", {}).get("stage") == "rolled_back")
        assert rolled[-1].json()["event"].get("reason")
        sub.wait_for(1, timeout=60, topic=f"crackseg/{DEVICE}/detections",
                     predicate=lambda m: m.json()["model"]["version"] == "2.0.0"
                     and m.json()["seq"] > got[-1].json()["seq"])
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    listing = subprocess.run([sys.executable, "-m", "edge_agent.cli", "model", "list", "--state-dir",
                              str(tmp_path / "state")], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "2.0.0" in listing.stdout and "3.0.0" in listing.stdout
    audit = (tmp_path / "state" / "audit.jsonl").read_text()
    assert "rolled" in audit or "rollback" in audit
