"""A local mosquitto for the benchmarks, and the MQTT throughput through the persistent outbox.

Why a real broker: the outbox's cost is the SQLite write (WAL, ``synchronous=FULL``) plus the
wait for PUBACKs, both only real with a real broker on a real socket. The same messages are
also sent with bare paho QoS 1 (kept only in memory, lost on a restart: the upstream way),
so the price of surviving ``kill -9`` and power loss is a number, not a guess.

CPU cost per detection is the process CPU time (all threads: caller, outbox sender, paho
network thread) divided by the messages, so it is what a detection costs the vehicle
computer, whatever thread pays it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench import BenchError

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """The mosquitto binary ($MOSQUITTO_BIN, PATH, the usual sbin places) or None."""
    env = os.environ.get("MOSQUITTO_BIN")
    if env and os.access(env, os.X_OK):
        return env
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_CANDIDATES if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """mosquitto on a free loopback port with its own config file; ``with LocalBroker(dir) as b: b.url``."""

    def __init__(self, workdir: str | Path):
        binary = find_mosquitto()
        if binary is None:
            raise BenchError("mosquitto is not installed; install it (apt-get install mosquitto) or set "
                             "MOSQUITTO_BIN, or run with --no-agent to skip the agent and MQTT benchmarks")
        self.binary = binary
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.dir / "mosquitto.log"
        self.config_path = self.dir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", f"log_dest file {self.log_path}",
                 "log_type error", "log_type warning", "max_queued_messages 100000"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # mosquitto drops to 'mosquitto' otherwise and cannot write its log here
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> LocalBroker:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config_path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
                raise BenchError(f"mosquitto exited at start ({err or self._log_tail()}); check {self.config_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BenchError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-500:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sample_detection(index: int, n_cracks: int = 3) -> dict:
    """A detections payload shaped like the agent's (reporter.py), about 1 KB with 3 cracks."""
    cracks = [{"track_id": 1000 + index * 10 + k, "first_sighting": k == 0, "type": "longitudinal",
               "severity": "medium", "length_mm": 812.4 + k, "width_mm": {"mean": 3.2, "max": 6.1, "p90": 5.0},
               "area_mm2": 2599.7, "bbox": [120 + k, 40, 64, 210], "orientation_deg": 84.1,
               "confidence": 0.873, "polyline": [[130, 42], [131, 90], [136, 148], [139, 249]]}
              for k in range(n_cracks)]
    return {"frame": {"index": index, "width": 1280, "height": 720, "source": "bench", "position_s": index / 10},
            "model": {"name": "bench", "version": "0", "backend": "onnx", "precision": "int8", "threshold": 0.5},
            "inference_ms": 21.5, "position": {"has_fix": False}, "crack_count": n_cracks,
            "new_crack_count": 1, "crack_pixel_fraction": 0.0123, "cracks": cracks, "cracks_omitted": 0}


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def outbox_throughput(url: str, n: int, workdir: str | Path, timeout_s: float = 120.0) -> dict:
    """Publish ``n`` detections through the agent's communicator (outbox, QoS 1) until all are acked."""
    from edge_agent.comms.mqtt import MqttCommunicator
    from edge_agent.config.mqtt import MqttConfig

    state = Path(tempfile.mkdtemp(prefix="outbox-", dir=workdir))
    comms = MqttCommunicator(MqttConfig(url=url, client_id="bench-outbox"), "bench-outbox", state_dir=state)
    comms.start()
    try:
        _wait(lambda: comms.is_connected, 10.0, f"the outbox client could not connect to {url}")
        payloads = [sample_detection(i) for i in range(n)]
        size = len(json.dumps(payloads[0]).encode())
        enqueue_ms = []
        c0, t0 = _cpu_s(), time.perf_counter()
        for i, p in enumerate(payloads):
            s = time.perf_counter()
            if not comms.publish_detection(p, ts=time.time()):
                raise BenchError(f"the outbox refused detection {i} (full or closed)")
            enqueue_ms.append((time.perf_counter() - s) * 1000.0)
        if not comms.flush(timeout_s):
            raise BenchError(f"the broker acknowledged only {comms.stats().acked} of {n} detections in "
                             f"{timeout_s:.0f} s")
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        stats = comms.stats()
    finally:
        comms.stop(flush_timeout=1.0)
        shutil.rmtree(state, ignore_errors=True)
    return {"messages": n, "payload_bytes": size, "acked": stats.acked, "seconds": round(wall, 3),
            "messages_per_s": round(n / wall, 1), "cpu_ms_per_message": round(cpu * 1000.0 / n, 3),
            "enqueue_ms_p50": round(statistics.median(enqueue_ms), 3),
            "enqueue_ms_p95": round(sorted(enqueue_ms)[int(0.95 * (len(enqueue_ms) - 1))], 3)}


def paho_baseline(url: str, n: int, timeout_s: float = 60.0) -> dict:
    """The same detections with bare paho QoS 1 (in memory only, like most upstream code)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.config.mqtt import parse_broker_url

    _, host, port = parse_broker_url(url)
    done = threading.Event()
    acked = [0]

    def on_publish(client, userdata, mid, reason_code, properties):  # noqa: ANN001 - paho callback
        acked[0] += 1
        if acked[0] >= n:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho")
    client.max_inflight_messages_set(100)
    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    try:
        _wait(client.is_connected, 10.0, f"the paho client could not connect to {url}")
        payloads = [json.dumps(sample_detection(i)).encode() for i in range(n)]
        c0, t0 = _cpu_s(), time.perf_counter()
        for p in payloads:
            client.publish("bench/paho/detections", p, qos=1)
        if not done.wait(timeout_s):
            raise BenchError(f"bare paho: only {acked[0]} of {n} messages acknowledged in {timeout_s:.0f} s")
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    finally:
        client.disconnect()
        client.loop_stop()
    return {"messages": n, "seconds": round(wall, 3), "messages_per_s": round(n / wall, 1),
            "cpu_ms_per_message": round(cpu * 1000.0 / n, 3)}


def _wait(cond, timeout: float, message: str) -> None:  # noqa: ANN001 - any callable
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise BenchError(message)
        time.sleep(0.02)


def mqtt_benchmark(url: str, n: int, workdir: str | Path) -> dict:
    """Outbox throughput and the bare-paho baseline on the same broker, and what the outbox costs."""
    outbox = outbox_throughput(url, n, workdir)
    bare = paho_baseline(url, n)
    return {"broker": "mosquitto (local, loopback)", "qos": 1, "outbox": outbox, "bare_paho": bare,
            "outbox_extra_cpu_ms_per_message": round(outbox["cpu_ms_per_message"] - bare["cpu_ms_per_message"], 3)}
