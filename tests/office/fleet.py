"""A synthetic fleet for the office tests: realistic v2 traffic, a QoS 1 publisher, ingest processes.

The detections come from ``office.synthetic`` (cracks at known places, the payloads a camera
would produce); their shape is checked against the real JSON Schemas in test_messages.py.
Status, health and command responses are built with the agent's own envelope code
(``edge_agent.comms.envelope``), as a vehicle sends them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from office.synthetic import fleet_messages

ORIGIN = (4.3517, 52.0116)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    msg: dict[str, Any] | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None


def fleet_detections(devices: int, length_m: float, *, every_m: float = 2.0, seed: int = 0) -> list[Outgoing]:
    """Detections of ``devices`` vehicles, each driving its own parallel road of ``length_m``."""
    return [Outgoing(topic, payload, msg) for topic, payload, msg in
            fleet_messages(devices, length_m, ORIGIN, every_m=every_m, seed=seed)]


def envelope_message(device: str, seq: int, fields: dict[str, Any], ts: float | None = None) -> bytes:
    from edge_agent.comms import envelope

    now = time.time()
    return envelope.encode(envelope.wrap(fields, device_id=device, seq=seq, ts=ts or now, sent_ts=now))


def side_traffic(device: str) -> list[Outgoing]:
    """A status, a health report and a command response of one vehicle (the agent's shapes)."""
    status = envelope_message(device, 1, {"state": "online", "model": {"name": "crackseg-ref", "version": "1.0",
                                                                         "backend": "onnx", "precision": "int8"}})
    health = envelope_message(device, 1, {
        "frames": {"in": 10, "processed": 10, "fps_in": 10.0, "fps_out": 10.0, "dropped": 0, "inference_errors": 0},
        "inference_ms": {"p50": 20.0, "p95": 25.0}, "queue_depth": 0,
        "camera": {"state": "ok", "stalls": 0, "reconnects": 0},
        "outbox": {"depth": 0, "oldest_age_s": None, "dropped": 0},
        "link": {"state": "connected", "connected": True, "reconnects": 0},
        "system": {"cpu_percent": 12.0, "rss_mb": 180.0, "temperature_c": None, "throttling": None},
        "model": {"name": "crackseg-ref", "version": "1.0", "backend": "onnx", "precision": "int8", "threshold": 0.5},
        "paused": False, "uptime_s": 12.5})
    response = envelope_message(device, 1, {"command": "snapshot", "request_id": "r1", "ok": True, "result": {}})
    return [Outgoing(f"crackseg/{device}/status", status), Outgoing(f"crackseg/{device}/health", health),
            Outgoing(f"crackseg/{device}/cmd/response", response)]


def tiny_jpeg() -> bytes:
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".jpg", np.full((16, 24, 3), 90, np.uint8))
    assert ok
    return bytes(buf.tobytes())


def snapshot(device: str, seq: int, frame_index: int, ts_iso: str, msg_id: str) -> Outgoing:
    """A snapshot as the agent sends it over MQTT 5: raw JPEG, the envelope in user properties."""
    props = (("schema_version", "2"), ("msg_id", msg_id), ("seq", str(seq)), ("device_id", device),
             ("ts", ts_iso), ("sent_ts", ts_iso), ("frame_index", str(frame_index)), ("crack_count", "1"))
    return Outgoing(f"crackseg/{device}/snapshots", tiny_jpeg(), None, props, "image/jpeg")


def hostile(device: str, good: bytes) -> list[Outgoing]:
    """One of each kind of message the office must quarantine without stopping."""
    msg = json.loads(good)
    invalid = dict(msg, crack_count=-3)
    future = dict(msg, schema_version=3, msg_id="f" * 32)
    topic = f"crackseg/{device}/detections"
    return [Outgoing(topic, b"{this is not json"),
            Outgoing(topic, b"[1, 2, 3]"),
            Outgoing(topic, b'{"pad": "' + b"x" * (1_100_000) + b'"}'),
            Outgoing(topic, json.dumps(invalid).encode()),
            Outgoing(topic, json.dumps(future).encode())]


class Publisher:
    """One MQTT 5 client publishing at QoS 1, keeping at most ``window`` unacknowledged."""

    def __init__(self, host: str, port: int, client_id: str = "test-publisher", window: int = 200):
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.max_inflight_messages_set(window)
        self.client.max_queued_messages_set(window)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.sent = 0

    def publish(self, items: list[Outgoing], *, qos: int = 1, retain: bool = False,
                rate: float | None = None) -> None:
        """Publish in order; ``rate``: at most that many messages per second (a stream, not a burst)."""
        start = time.monotonic()
        for i, item in enumerate(items):
            if rate is not None and i % 50 == 0:
                ahead = start + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            props = None
            if item.user_properties or item.content_type:
                props = Properties(PacketTypes.PUBLISH)
                for k, v in item.user_properties:
                    props.UserProperty = (k, v)
                if item.content_type:
                    props.ContentType = item.content_type
            while True:
                info = self.client.publish(item.topic, item.payload, qos=qos, retain=retain, properties=props)
                if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
                    time.sleep(0.005)
                    continue
                assert info.rc == paho.MQTT_ERR_SUCCESS, f"publish failed: {info.rc}"
                break
            self.sent += 1

    def flush(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.client._out_messages and time.monotonic() < deadline:  # noqa: SLF001 - paho has no public drain
            time.sleep(0.02)
        assert not self.client._out_messages, "publisher: broker did not acknowledge everything"  # noqa: SLF001

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


class IngestProcess:
    """``crackseg-office ingest`` as a real process (so it can be SIGKILLed)."""

    def __init__(self, broker_url: str, db_url: str, client_id: str, log_path: Path, *extra: str):
        self.args = [sys.executable, "-m", "office", "--log-level", "INFO", "ingest", "--mqtt-url", broker_url,
                     "--db", db_url, "--client-id", client_id, *extra]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self) -> IngestProcess:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        return self

    def wait_subscribed(self, timeout: float = 60) -> None:
        """Until this run of the process has its subscriptions (its log says so)."""
        from tests.helpers import wait_until

        start = self._log_start

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"ingest died: {self.describe()}")
            return "MQTT: subscribed" in self.log_path.read_text(errors="replace")[start:]

        wait_until(ready, timeout, self.describe)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)

    def describe(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        state = "running" if self.alive() else f"exited {self.proc.returncode if self.proc else None}"
        return f"ingest process ({state}); log tail:\n{text[-3000:]}"


def run_in_thread(fn: Any, *args: Any) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t
