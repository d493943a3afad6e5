"""The MQTT communicator against a real Mosquitto broker and a real SQLite outbox.

Outages are short (``OUTAGE_S``) to keep the suite quick; the code paths are the same as for
an hour without network.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent.comms import envelope
from edge_agent.comms.base import CommandError
from edge_agent.comms.mqtt import MqttCommunicator
from edge_agent.comms.outbox import Outbox
from edge_agent.comms.topics import TopicError
from edge_agent.config.mqtt import MqttConfig, MqttCredentialError, parse_broker_url
from tests.conftest import Received, Subscriber
from tests.helpers import wait_until
from tests.mosquitto import MosquittoBroker

OUTAGE_S = float(os.environ.get("CRACKSEG_TEST_OUTAGE_S", "3"))
CAPTURE_TS = 1_714_555_812.345  # 2024-05-01T09:30:12.345Z


@pytest.fixture
def comm(tmp_path: Path):
    """Factory for communicators on a temp outbox; every one is stopped at teardown."""
    made: list[MqttCommunicator] = []

    def factory(url: str, device_id: str = "van-1", *, outbox_path: Path | None = None, status: dict | None = None,
                environ: dict | None = None, start: bool = True, **cfg: Any) -> MqttCommunicator:
        cfg.setdefault("reconnect_min_s", 1)
        cfg.setdefault("reconnect_max_s", 1)
        c = MqttCommunicator(MqttConfig(url=url, **cfg), device_id,
                             outbox_path=outbox_path or tmp_path / f"outbox-{device_id}-{len(made)}.db",
                             status=status, environ=environ)
        made.append(c)
        if start:
            c.start()
        return c

    yield factory
    for c in made:
        c.stop(flush_timeout=0)


def detections(sub: Subscriber, device: str = "van-1") -> list[dict]:
    return [envelope.decode(m.payload) for m in sub.matching(topic=f"crackseg/{device}/detections")]


def states(sub: Subscriber, device: str = "van-1") -> list[str]:
    return [m.json()["state"] for m in sub.matching(topic=f"crackseg/{device}/status")]


# -- config ---------------------------------------------------------------------------------
def test_broker_url_forms() -> None:
    assert parse_broker_url("mqtt://broker") == ("mqtt", "broker", 1883)
    assert parse_broker_url("mqtts://broker.example:9999") == ("mqtts", "broker.example", 9999)
    assert MqttConfig(url="mqtts://b").port == 8883 and MqttConfig(url="mqtts://b").tls_enabled
    for bad, words in [("http://b:1883", "must start with mqtt://"), ("mqtt://:1883", "no host"),
                       ("mqtt://u:p@b", "must not hold credentials"), ("mqtt://b:99999", "invalid")]:
        with pytest.raises(ValueError, match=words):
            MqttConfig(url=bad)


def test_config_refuses_clear_text_password_and_inconsistent_auth(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clear text is not allowed"):
        MqttConfig(username="u", password="hunter2")
    with pytest.raises(ValueError, match="only one password source"):
        MqttConfig(username="u", password_env="A", password_credential="b")
    with pytest.raises(ValueError, match="username is not"):
        MqttConfig(password_env="A")
    with pytest.raises(ValueError, match="use mqtts://"):
        MqttConfig(url="mqtt://b", tls={"insecure": True})
    with pytest.raises(ValueError, match="tls.ca_file not found"):
        MqttConfig(url="mqtts://b", tls={"ca_file": str(tmp_path / "nope.pem")})
    with pytest.raises(ValueError, match="extra"):
        MqttConfig(outbox={"max_rows": 5})
    with pytest.raises(ValueError, match="topic_prefix"):
        MqttConfig(topic_prefix="a/+/b")
    assert MqttConfig(outbox={"max_bytes": "64M"}).outbox.max_bytes == 64 * 1024**2


def test_password_sources_and_their_errors(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert MqttConfig(username="u", password_file=pw).resolve_password() == "s3cret"
    assert MqttConfig(username="u", password_env="MQTT_PW").resolve_password({"MQTT_PW": "envpw"}) == "envpw"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("credpw")
    cfg = MqttConfig(username="u", password_credential="mqtt-password")
    assert cfg.resolve_password({"CREDENTIALS_DIRECTORY": str(creds)}) == "credpw"
    assert MqttConfig().resolve_password() is None

    with pytest.raises(MqttCredentialError, match="file not found"):
        MqttConfig(username="u", password_file=tmp_path / "missing").resolve_password()
    with pytest.raises(MqttCredentialError, match="MQTT_PW is not set"):
        MqttConfig(username="u", password_env="MQTT_PW").resolve_password({})
    with pytest.raises(MqttCredentialError, match="CREDENTIALS_DIRECTORY"):
        cfg.resolve_password({})
    with pytest.raises(MqttCredentialError, match="LoadCredential=other"):
        MqttConfig(username="u", password_credential="other").resolve_password({"CREDENTIALS_DIRECTORY": str(creds)})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(MqttCredentialError, match="is empty"):
        MqttConfig(username="u", password_file=tmp_path / "empty").resolve_password()


def test_bad_device_id_and_reserved_fields_are_clear_errors(comm, tmp_path: Path) -> None:
    with pytest.raises(TopicError, match="topic level"):
        comm("mqtt://127.0.0.1:1", "van/7", start=False)
    c = comm("mqtt://127.0.0.1:1", start=False)
    with pytest.raises(envelope.EnvelopeError, match="reserved"):
        c.publish_detection({"seq": 3}, ts=CAPTURE_TS)
    with pytest.raises(envelope.EnvelopeError, match="not JSON"):
        c.publish_detection({"x": object()}, ts=CAPTURE_TS)
    with pytest.raises(envelope.EnvelopeError, match="no timezone"):
        c.publish_detection({"x": 1}, ts=datetime(2024, 5, 1))
    with pytest.raises(TopicError):
        c.publish("a/#", {"x": 1})
    assert c.publish_detection({"x": 1}, ts=CAPTURE_TS)
    assert c.outbox.last_seq("detections") == 1  # the refused ones used no seq


# -- end to end -----------------------------------------------------------------------------
def test_detections_arrive_as_valid_envelopes_in_order(mosquitto: MosquittoBroker, subscriber, comm) -> None:
    import numpy as np

    sub = subscriber(mosquitto.url, "crackseg/#")
    c = comm(mosquitto.url, status={"model": "cracknet-lite", "model_version": "1.2.0"},
             outbox={"inflight": 3})
    n = 30
    for i in range(n):
        assert c.publish_detection({"i": i, "length_m": np.float32(1.5), "bbox": np.arange(4)}, ts=CAPTURE_TS + i)
    assert c.flush(20)
    sub.wait_for(n, topic="crackseg/van-1/detections")
    got = detections(sub)
    assert [d["seq"] for d in got] == list(range(1, n + 1))  # in order even with a window of 3
    assert [d["i"] for d in got] == list(range(n))
    assert len({d["msg_id"] for d in got}) == n
    assert all(d["device_id"] == "van-1" and d["schema_version"] == envelope.SCHEMA_VERSION for d in got)
    assert got[0]["ts"] == "2024-05-01T09:30:12.345Z" and got[0]["length_m"] == 1.5 and got[0]["bbox"] == [0, 1, 2, 3]
    first = sub.matching(topic="crackseg/van-1/detections")[0]
    assert first.content_type == "application/json"

    online = sub.wait_for(1, topic="crackseg/van-1/status")[0]
    assert online.json()["state"] == "online" and online.json()["model_version"] == "1.2.0"
    s = c.stats()
    assert s.connected and s.link_state == "connected" and s.outbox_depth == 0
    assert s.published == n and s.acked == n and s.dropped == 0 and s.inflight == 0


def test_status_online_then_stopped_retained(mosquitto: MosquittoBroker, subscriber, comm) -> None:
    sub = subscriber(mosquitto.url, "crackseg/+/status")
    c = comm(mosquitto.url, status={"model": "m"})
    sub.wait_for(1, predicate=lambda m: m.json()["state"] == "online")
    c.set_status(model_version="2.0")
    assert c.stop(flush_timeout=5)
    sub.wait_for(1, predicate=lambda m: m.json()["state"] == "stopped")
    assert states(sub) == ["online", "stopped"]  # a clean stop sends no last will
    late = subscriber(mosquitto.url, "crackseg/+/status")  # retained: a dashboard starting later sees it
    msg = late.wait_for(1)[0]
    assert msg.retain and msg.json()["state"] == "stopped" and msg.json()["model_version"] == "2.0"


def test_health_and_snapshot_properties(mosquitto: MosquittoBroker, subscriber, comm) -> None:
    sub = subscriber(mosquitto.url, "crackseg/#")
    c = comm(mosquitto.url, health_expiry_s=42)
    wait_until(lambda: c.is_connected, 10, "connect")
    assert c.publish_health({"fps": 4.5})
    health = sub.wait_for(1, topic="crackseg/van-1/health")[0]
    assert health.expiry_s == 42 and envelope.decode(health.payload)["fps"] == 4.5
    jpeg = b"\xff\xd8\xff\xe0fakejpeg\xff\xd9"
    assert c.publish_snapshot(jpeg, ts=CAPTURE_TS, frame_index=7)
    snap = sub.wait_for(1, topic="crackseg/van-1/snapshots")[0]
    assert snap.payload == jpeg and snap.content_type == "image/jpeg"
    assert snap.user_properties["seq"] == "1" and snap.user_properties["frame_index"] == "7"
    assert snap.user_properties["ts"] == "2024-05-01T09:30:12.345Z" and snap.user_properties["device_id"] == "van-1"
    # raw bytes through the outbox keep their envelope (as user properties) and get a seq
    assert c.publish("raw", b"\x00\x01", qos=1, persistent=True, ts=CAPTURE_TS)
    assert c.flush(10)
    raw = sub.wait_for(1, topic="crackseg/van-1/raw")[0]
    assert raw.payload == b"\x00\x01" and raw.user_properties["seq"] == "1"
    assert raw.content_type == "application/octet-stream" and len(raw.user_properties["msg_id"]) == 32


def test_broker_outage_detections_queue_and_all_arrive(mosquitto: MosquittoBroker, subscriber, comm) -> None:
    sub = subscriber(mosquitto.url, "crackseg/van-1/#", durable=True)
    subscribed_at = time.time()
    c = comm(mosquitto.url)
    for i in range(5):
        c.publish_detection({"i": i}, ts=CAPTURE_TS)
    sub.wait_for(5, topic="crackseg/van-1/detections")
    mosquitto.wait_saved(after=subscribed_at)  # the subscriber's session survives the kill

    mosquitto.stop(kill=True)
    down_at = time.monotonic()
    wait_until(lambda: not c.is_connected, 10, "the client to notice the dead broker")
    for i in range(5, 15):
        assert c.publish_detection({"i": i}, ts=CAPTURE_TS)
    assert not c.publish_health({"fps": 1.0})  # not queued: stale health is worthless
    s = c.stats()
    assert s.outbox_depth == 10 and s.skipped_offline == 1 and s.link_state == "disconnected"
    assert not c.flush(0.5)
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))

    mosquitto.start()
    assert c.flush(30)
    got = sub.wait_for(15, timeout=30, topic="crackseg/van-1/detections")
    seqs = {envelope.decode(m.payload)["seq"] for m in got}
    assert seqs == set(range(1, 16))
    s = c.stats()
    assert s.reconnects >= 1 and s.connected and s.outbox_depth == 0 and s.dropped == 0
    sub.wait_for(2, topic="crackseg/van-1/status", predicate=lambda m: m.json()["state"] == "online")


def test_starts_with_broker_down_and_bounds_drop_oldest(make_broker, subscriber, comm, tmp_path: Path) -> None:
    broker = make_broker(start=False)  # its port is reserved: connections are refused until it starts
    c = comm(broker.url, outbox={"max_messages": 5})
    for i in range(8):
        c.publish_detection({"i": i}, ts=CAPTURE_TS)
    wait_until(lambda: c.stats().last_error is not None, 10, "a connection error in stats")
    s = c.stats()
    assert not s.connected and s.outbox_depth == 5 and s.dropped == 3
    assert "cannot reach the broker" in s.last_error

    broker.start()
    sub = subscriber(broker.url, "crackseg/van-1/detections")
    assert c.flush(30)
    got = sub.wait_for(5, timeout=20)
    assert sorted(envelope.decode(m.payload)["seq"] for m in got) == [4, 5, 6, 7, 8]  # the gap shows the loss
    assert c.stats().dropped == 3


# -- kill -9 of the agent ------------------------------------------------------------------
PUBLISHER = r'''
import sys, time
from edge_agent.config.mqtt import MqttConfig
from edge_agent.comms.mqtt import MqttCommunicator

url, outbox, first, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
c = MqttCommunicator(MqttConfig(url=url, reconnect_min_s=1, reconnect_max_s=1), "van-kill",
                     outbox_path=outbox, status={"model": "m"})
c.start()
deadline = time.monotonic() + 20
while not c.is_connected and time.monotonic() < deadline:
    time.sleep(0.02)
print("ready", c.is_connected, flush=True)
if mode == "offline":  # wait for the test to take the broker down
    while c.is_connected:
        time.sleep(0.02)
if mode == "frozen":  # wait for the test to freeze the broker
    sys.stdin.readline()
for i in range(first, first + count):
    c.publish_detection({"i": i}, ts=time.time())
    print("queued", i, flush=True)
    if mode == "stream":
        time.sleep(0.005)
if mode == "stop":
    print("stopped", c.stop(flush_timeout=30), flush=True)
else:
    if mode == "frozen":  # the sender hands every row to paho; the broker acknowledges none
        deadline = time.monotonic() + 20
        while c.stats().published < count and time.monotonic() < deadline:
            time.sleep(0.02)
    else:  # disconnected: the sender must hand nothing over; give a wrong one the time to show
        time.sleep(0.5)
    print("waiting", c.stats().published, flush=True)
    time.sleep(600)
'''


class Publisher:
    """A publisher process with its stdout read into a queue (so the test can wait on lines)."""

    def __init__(self, script: Path, url: str, outbox: Path, first: int, count: int, mode: str):
        self.proc = subprocess.Popen([sys.executable, str(script), url, str(outbox), str(first), str(count), mode],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"publisher never printed '{prefix}...'; output: {self.seen[-20:]}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def finish(self, timeout: float = 60) -> None:
        self.wait_line("stopped", timeout)
        assert self.proc.wait(timeout) == 0, self.seen[-20:]


def assert_at_least_once(msgs: list[Received], last_seq: int) -> int:
    """Every seq 1..last_seq arrived; repeats carry the same msg_id and body. Returns duplicates."""
    by_seq: dict[int, set[tuple[str, int]]] = defaultdict(set)
    for m in msgs:
        d = envelope.decode(m.payload)
        by_seq[d["seq"]].add((d["msg_id"], d["i"]))
    assert sorted(by_seq) == list(range(1, last_seq + 1))
    assert all(len(v) == 1 for v in by_seq.values()), "a seq was reused by a different message"
    return len(msgs) - len(by_seq)


def test_agent_killed_mid_stream_loses_nothing(mosquitto: MosquittoBroker, subscriber, tmp_path: Path) -> None:
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    outbox = tmp_path / "kill.db"
    sub = subscriber(mosquitto.url, "crackseg/van-kill/#")

    a = Publisher(script, mosquitto.url, outbox, 0, 400, "stream")
    a.wait_line("ready True")
    a.wait_line("queued 60")
    a.kill9()
    sub.wait_for(1, topic="crackseg/van-kill/status", predicate=lambda m: m.json()["state"] == "offline")

    b = Publisher(script, mosquitto.url, outbox, 1000, 20, "stop")
    b.finish()
    with Outbox(outbox) as box:
        last = box.last_seq("detections")
        assert len(box) == 0
    assert last >= 81  # at least 61 from the killed run, 20 from the second
    wait_until(lambda: len({envelope.decode(m.payload)["seq"]
                            for m in sub.matching(topic="crackseg/van-kill/detections")}) >= last, 20,
               "every seq to arrive")
    assert_at_least_once(sub.matching(topic="crackseg/van-kill/detections"), last)
    assert states(sub, "van-kill") == ["online", "offline", "online", "stopped"]
    offline = sub.matching(topic="crackseg/van-kill/status")[1].json()
    assert offline["seq"] == 0 and offline["model"] == "m"  # the last will


@pytest.mark.parametrize("broker_state", ["down", "frozen"])
def test_agent_killed_with_unacked_rows_resends_them_on_next_start(mosquitto: MosquittoBroker, subscriber,
                                                                   tmp_path: Path, broker_state: str) -> None:
    """down: queued while the broker is gone. frozen: handed to paho and sent, but never PUBACKed."""
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    outbox = tmp_path / "kill.db"
    sub = subscriber(mosquitto.url, "crackseg/van-kill/detections", durable=True)
    subscribed_at = time.time()
    a = Publisher(script, mosquitto.url, outbox, 0, 12, "offline" if broker_state == "down" else "frozen")
    a.wait_line("ready True")
    if broker_state == "down":
        mosquitto.wait_saved(after=subscribed_at)
        mosquitto.stop()
        assert a.wait_line("waiting") == "waiting 0"  # nothing could be handed over
    else:
        mosquitto.pause()
        a.go()
        assert a.wait_line("waiting") == "waiting 12"  # all in flight, none acknowledged
    a.kill9()
    with Outbox(outbox) as box:
        assert [e.seq for e in box.peek()] == list(range(1, 13))
    if broker_state == "down":
        mosquitto.start()
    else:
        mosquitto.resume()  # it may still deliver what the dead client had sent: duplicates
    b = Publisher(script, mosquitto.url, outbox, 100, 0, "stop")
    b.finish()
    sub.wait_for(12, timeout=20)
    # a marker sent now reaches the subscriber after everything the broker routed before it (the dead
    # client's duplicates too): when it is here, nothing is still on its way
    sub.client.publish("crackseg/van-kill/detections", b"marker", qos=1).wait_for_publish(5)
    sub.wait_for(1, predicate=lambda m: m.payload == b"marker")
    assert_at_least_once(sub.matching(lambda m: m.payload != b"marker"), 12)


# -- security -------------------------------------------------------------------------------
def test_tls_with_generated_ca_and_client_certificate(make_broker, subscriber, comm, tmp_path: Path) -> None:
    broker = make_broker(tls=True, require_certificate=True)
    ca = broker.tls_files.ca_cert
    cert, key = broker.client_cert("van-1")
    sub_cert, sub_key = broker.client_cert("office")
    sub = subscriber(broker.url, "crackseg/#", ca_file=ca, client_cert=(sub_cert, sub_key))
    assert broker.url.startswith("mqtts://")
    c = comm(broker.url, tls={"ca_file": str(ca), "cert_file": str(cert), "key_file": str(key)})
    c.publish_detection({"i": 1}, ts=CAPTURE_TS)
    assert c.flush(20)
    assert envelope.decode(sub.wait_for(1, topic="crackseg/van-1/detections")[0].payload)["i"] == 1

    # a client that does not trust the broker's CA never connects, and says why in stats
    other = comm(broker.url, "van-2", tls={"cert_file": str(cert), "key_file": str(key)})
    wait_until(lambda: other.stats().last_error is not None, 15, "a TLS failure in stats")
    assert not other.is_connected


@pytest.mark.parametrize("source", ["file", "env"])
def test_password_auth(make_broker, subscriber, comm, tmp_path: Path, source: str) -> None:
    broker = make_broker(users={"van-1": "pa55", "office": "office-pw"})
    sub = subscriber(broker.url, "crackseg/#", username="office", password="office-pw")
    if source == "file":
        pw = tmp_path / "pw"
        pw.write_text("pa55\n")
        c = comm(broker.url, username="van-1", password_file=pw)
    else:
        c = comm(broker.url, username="van-1", password_env="VAN_PW", environ={"VAN_PW": "pa55"})
    c.publish_detection({"i": 1}, ts=CAPTURE_TS)
    assert c.flush(20)
    sub.wait_for(1, topic="crackseg/van-1/detections")

    wrong = comm(broker.url, "van-2", username="van-1", password_env="VAN_PW", environ={"VAN_PW": "nope"})
    wrong.publish_detection({"i": 2}, ts=CAPTURE_TS)
    wait_until(lambda: wrong.stats().last_error is not None, 15, "an auth failure in stats")
    assert "refused" in wrong.stats().last_error and not wrong.is_connected
    assert wrong.stats().outbox_depth == 1  # kept for when the credentials are fixed


def test_mqtt_311_mode(mosquitto: MosquittoBroker, subscriber, comm) -> None:
    sub = subscriber(mosquitto.url, "crackseg/#")
    c = comm(mosquitto.url, protocol="3.1.1", status={"model": "m"})
    c.subscribe_commands(lambda cmd: {"pong": cmd.args.get("n")})
    for i in range(5):
        c.publish_detection({"i": i}, ts=CAPTURE_TS)
    assert c.flush(20)
    sub.wait_for(5, topic="crackseg/van-1/detections")
    assert [d["seq"] for d in detections(sub)] == [1, 2, 3, 4, 5]
    assert c.publish_snapshot(b"\xff\xd8jpeg", ts=CAPTURE_TS)  # no user properties in 3.1.1: base64 JSON
    snap = envelope.decode(sub.wait_for(1, topic="crackseg/van-1/snapshots")[0].payload)
    assert snap["content_type"] == "image/jpeg" and base64.b64decode(snap["image_b64"]) == b"\xff\xd8jpeg"
    sub.client.publish("crackseg/van-1/cmd/ping", json.dumps({"n": 3, "request_id": "r9"}), qos=1)
    resp = envelope.decode(sub.wait_for(1, topic="crackseg/van-1/cmd/response")[0].payload)
    assert resp["ok"] and resp["result"] == {"pong": 3} and resp["request_id"] == "r9"
    assert c.stop(5)
    sub.wait_for(1, topic="crackseg/van-1/status", predicate=lambda m: m.json()["state"] == "stopped")


def test_commands_only_for_this_device(mosquitto: MosquittoBroker, subscriber, comm) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    sub = subscriber(mosquitto.url, "crackseg/#")
    # a retained command would re-run at every (re)connect of the agent: ignored when replayed
    sub.client.publish("crackseg/van-1/cmd/stale", "{}", qos=1, retain=True).wait_for_publish(5)
    calls: list[Any] = []

    def handler(cmd):  # noqa: ANN001, ANN202
        calls.append(cmd)
        if cmd.name == "fail":
            raise CommandError("cannot do that now")
        return {"name": cmd.name, "args": cmd.args}

    c = comm(mosquitto.url)
    c.subscribe_commands(handler)
    sub.wait_for(1, topic="crackseg/van-1/status")
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = b"corr-1"
    sub.client.publish("crackseg/van-2/cmd/reload", "{}", qos=1)  # another vehicle's command
    sub.client.publish("crackseg/van-1/status/cmd/x", "{}", qos=1)
    sub.client.publish("crackseg/van-1/cmd/reload", json.dumps({"id": "a1", "force": True}), qos=1,
                       properties=props)
    sub.client.publish("crackseg/van-1/cmd/fail", "", qos=1)
    sub.client.publish("crackseg/van-1/cmd/bad", "not json", qos=1)
    # commands are handled one by one in arrival order: when the marker, sent last, is answered, anything
    # wrongly accepted before it has been answered too
    sub.client.publish("crackseg/van-1/cmd/marker", "{}", qos=1)
    sub.wait_for(1, topic="crackseg/van-1/cmd/response", predicate=lambda m: m.json()["command"] == "marker")
    responses = sub.matching(lambda m: m.json()["command"] != "marker", topic="crackseg/van-1/cmd/response")
    assert len(responses) == 3
    by_cmd = {r.json()["command"]: r for r in responses}
    ok = by_cmd["reload"].json()
    assert ok["ok"] and ok["request_id"] == "a1" and ok["result"] == {"name": "reload", "args": {"id": "a1",
                                                                                               "force": True}}
    assert by_cmd["reload"].correlation_data == b"corr-1"
    fail = by_cmd["fail"].json()
    assert fail["ok"] is False and fail["error"] == "cannot do that now" and fail["request_id"] is None
    assert not by_cmd["bad"].json()["ok"] and "JSON object" in by_cmd["bad"].json()["error"]
    assert sorted(cmd.name for cmd in calls) == ["fail", "marker", "reload"]  # not van-2's, not our responses
    assert c.stats().commands == 3 + 1  # and the marker

    assert "stale" not in [cmd.name for cmd in calls]
    sub.client.publish("crackseg/van-1/cmd/stale", b"", qos=1, retain=True).wait_for_publish(5)  # clean up
