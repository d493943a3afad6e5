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
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench import BenchError
from edge_agent.demo.broker import BrokerUnavailableError, find_mosquitto
from edge_agent.demo.broker import LocalBroker as _PackageBroker


def LocalBroker(workdir: str | Path | None = None) -> _PackageBroker:  # noqa: N802 (kept name for callers)
    """The package's private Mosquitto (``edge_agent.demo.broker``), as a BenchError when missing."""
    try:
        find_mosquitto()
    except BrokerUnavailableError as exc:
        raise BenchError(f"{exc}; or run with --no-agent to skip the agent and MQTT benchmarks") from None
    return _PackageBroker()


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
