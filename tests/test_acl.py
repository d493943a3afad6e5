"""The documented Mosquitto ACL (docs/mosquitto-acl.example) against a real broker: a vehicle
cannot publish another vehicle's commands or read its detections; the agent works under it and
acts only on commands of its own topic.

"Not delivered" is proven without waiting out a timeout: after the forbidden message, an
allowed marker goes to the same subscriber over the same broker; when the marker has arrived,
the forbidden message, published and acknowledged before it, would have arrived first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.agent.commands import CommandRegistry
from edge_agent.comms.mqtt import MqttCommunicator
from edge_agent.comms.topics import Topics
from edge_agent.config.mqtt import MqttConfig
from tests.helpers import wait_until

ACL = (Path(__file__).resolve().parents[1] / "docs" / "mosquitto-acl.example").read_text()
USERS = {"van-01": "pw-van-01", "van-02": "pw-van-02", "office": "pw-office"}


def client(broker, user: str) -> paho.Client:
    """A connected MQTT 5 publisher logged in as ``user``."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-pub-{time.monotonic_ns()}",
                    protocol=MQTTProtocolVersion.MQTTv5)
    c.username_pw_set(user, USERS[user])
    c.connect(broker.host, broker.port, keepalive=10)
    c.loop_start()
    wait_until(c.is_connected, 10, f"{user} to log in")
    return c


def publish(c: paho.Client, topic: str, payload: dict) -> None:
    info = c.publish(topic, json.dumps(payload), qos=1)
    info.wait_for_publish(5)  # acknowledged: the broker has routed (or dropped) it


def test_a_vehicle_cannot_command_others_or_read_their_detections(make_broker, subscriber) -> None:
    broker = make_broker(users=USERS, acl=ACL)
    office = subscriber(broker.url, "crackseg/#", username="office", password=USERS["office"])
    van2_cmds = subscriber(broker.url, "crackseg/van-02/cmd/+", username="van-02", password=USERS["van-02"])
    spy = subscriber(broker.url, "crackseg/+/detections", "crackseg/van-02/#", "crackseg/van-01/cmd/+",
                     username="van-01", password=USERS["van-01"])
    van1, van2, boss = client(broker, "van-01"), client(broker, "van-02"), client(broker, "office")
    try:
        # van-01 forges commands: for van-02, and for itself; neither is delivered to anyone
        publish(van1, "crackseg/van-02/cmd/model-update", {"url": "http://evil/x.tar.gz", "sha256": "0" * 64})
        publish(van1, "crackseg/van-01/cmd/model-rollback", {})
        publish(boss, "crackseg/van-02/cmd/ping", {"marker": 1})
        publish(boss, "crackseg/van-01/cmd/ping", {"marker": 2})
        assert [m.json() for m in van2_cmds.wait_for(1)] == [{"marker": 1}]
        spy.wait_for(1, topic="crackseg/van-01/cmd/ping")
        office.wait_for(2, predicate=lambda m: "marker" in m.json())
        assert not office.matching(predicate=lambda m: "marker" not in m.json() and "/cmd/" in m.topic)
        assert not spy.matching(topic="crackseg/van-01/cmd/model-rollback")
        # van-02 reports a crack: the office reads it, van-01 does not
        publish(van2, "crackseg/van-02/detections", {"cracks": 3})
        publish(van2, "crackseg/van-02/cmd/response", {"ok": True})
        publish(boss, "crackseg/van-01/cmd/ping", {"marker": 3})
        office.wait_for(1, topic="crackseg/van-02/detections")
        office.wait_for(1, topic="crackseg/van-02/cmd/response")
        spy.wait_for(2, topic="crackseg/van-01/cmd/ping")
        assert not spy.matching(predicate=lambda m: m.topic.startswith("crackseg/van-02/"))
        # van-01 cannot speak in van-02's name either
        publish(van1, "crackseg/van-02/detections", {"cracks": 99})
        publish(van1, "crackseg/van-02/cmd/response", {"ok": False})
        publish(boss, "crackseg/van-02/cmd/ping", {"marker": 4})
        van2_cmds.wait_for(2)
        office.wait_for(4, predicate=lambda m: "marker" in m.json())
        assert [m.json() for m in office.matching(topic="crackseg/van-02/detections")] == [{"cracks": 3}]
        assert [m.json() for m in office.matching(topic="crackseg/van-02/cmd/response")] == [{"ok": True}]
    finally:
        for c in (van1, van2, boss):
            c.disconnect()
            c.loop_stop()


def test_the_agent_works_under_the_acl_and_obeys_only_its_own_topic(make_broker, subscriber, tmp_path) -> None:
    broker = make_broker(users=USERS, acl=ACL)
    office = subscriber(broker.url, "crackseg/#", username="office", password=USERS["office"])
    calls: list[str] = []
    registry = CommandRegistry()
    registry.register("ping", lambda cmd: calls.append(cmd.topic) or {"pong": True})
    comm = MqttCommunicator(MqttConfig(url=broker.url, username="van-01", password_env="VAN_PW", reconnect_min_s=1,
                                       reconnect_max_s=1), "van-01", outbox_path=tmp_path / "outbox.db",
                            environ={"VAN_PW": USERS["van-01"]}, status={"model": "tiny"})
    comm.subscribe_commands(registry)
    comm.start()
    boss = client(broker, "office")
    try:
        comm.publish_detection({"cracks": 1}, ts=time.time())
        assert comm.flush(20)
        office.wait_for(1, topic="crackseg/van-01/detections")
        office.wait_for(1, topic="crackseg/van-01/status", predicate=lambda m: m.json()["state"] == "online")
        for attempt in range(20):  # until the agent's command subscription is in place
            publish(boss, "crackseg/van-02/cmd/ping", {"request_id": f"other-{attempt}"})
            publish(boss, "crackseg/van-01/cmd/ping", {"request_id": f"own-{attempt}"})
            try:
                office.wait_for(1, timeout=1, topic="crackseg/van-01/cmd/response")
                break
            except AssertionError:
                continue
        response = json.loads(office.matching(topic="crackseg/van-01/cmd/response")[0].payload)
        assert response["ok"] and response["result"] == {"pong": True}
        assert calls and set(calls) == {"crackseg/van-01/cmd/ping"}
    finally:
        boss.disconnect()
        boss.loop_stop()
        comm.stop(flush_timeout=1)
    # and in the agent itself, whatever the broker delivers: only its own command topics are commands
    topics = Topics("crackseg", "van-01")
    assert topics.command_name("crackseg/van-01/cmd/ping") == "ping"
    for other in ("crackseg/van-02/cmd/ping", "crackseg/van-01/cmd/response", "crackseg/van-01/cmd/a/b",
                  "crackseg/van-01x/cmd/ping", "other/van-01/cmd/ping"):
        assert topics.command_name(other) is None
