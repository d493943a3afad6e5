"""The local HTTP endpoints on a real socket (free port), answering from a snapshot the test controls."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request

import pytest

from edge_agent.config.sections import HttpConfig
from edge_agent.service.http import HealthServer, HealthServerError
from tests.helpers import PortReservation, connection_refused, listening_ports


def latency_histogram(*ms: float) -> dict:
    from edge_agent.stats.rates import LatencyHistogram

    hist = LatencyHistogram()
    for value in ms:
        hist.add(value)
    return hist.snapshot()


def healthy_snapshot() -> dict:
    return {
        "heartbeat_age_s": 0.2, "model_loaded": True, "camera_last_frame_age_s": 0.1, "camera_state": "streaming",
        "outbox_writable": True, "frames_in": 120, "frames_processed": 118, "frames_dropped": 2, "fps": 9.5,
        "inference_ms_p50": 41.0, "inference_ms_p95": 63.5, "outbox_depth": 3, "outbox_oldest_age_s": 1.5,
        "inference_histogram": latency_histogram(41.0, 41.0, 63.5, 120.0),
        "mqtt_connected": True, "mqtt_reconnects": 1, "cpu_percent": 180.0, "rss_mb": 212.0, "temperature_c": 61.2,
        "uptime_s": 33.0,
        "model": {"name": "cracknet-lite", "version": "1.2.0", "backend": "onnx", "precision": "int8"},
        "model_manifest": {"format_version": 1, "name": "cracknet-lite", "version": "1.2.0"},
    }


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


@pytest.fixture
def served():
    state = {"snap": healthy_snapshot()}
    server = HealthServer(HttpConfig(port=0), lambda: dict(state["snap"]), heartbeat_timeout_s=10,
                          camera_stall_s=5)
    assert server.start()
    yield server, state
    server.stop()


def test_binds_loopback_by_default():
    assert HttpConfig().host == "127.0.0.1"


def test_health_and_ready_when_all_is_well(served):
    server, _ = served
    assert server.port != 0
    code, ctype, body = get(server.url + "/health")
    assert code == 200 and ctype == "application/json" and json.loads(body)["status"] == "ok"
    code, _, body = get(server.url + "/ready")
    data = json.loads(body)
    assert code == 200 and data["status"] == "ready"
    assert {k: v["ok"] for k, v in data["checks"].items()} == {
        "model_loaded": True, "camera_delivering": True, "outbox_writable": True}


def test_ready_flips_when_camera_stalls_and_back(served):
    server, state = served
    state["snap"]["camera_last_frame_age_s"] = 12.0
    state["snap"]["camera_state"] = "reconnecting"
    code, _, body = get(server.url + "/ready")
    data = json.loads(body)
    assert code == 503 and data["status"] == "not ready"
    assert data["checks"]["camera_delivering"]["ok"] is False
    assert "reconnecting" in data["checks"]["camera_delivering"]["detail"]
    assert data["checks"]["model_loaded"]["ok"] and data["checks"]["outbox_writable"]["ok"]
    state["snap"]["camera_last_frame_age_s"] = 0.3
    assert get(server.url + "/ready")[0] == 200


@pytest.mark.parametrize("change", [{"model_loaded": False}, {"outbox_writable": False},
                                    {"camera_last_frame_age_s": None}])
def test_ready_false_for_each_failing_check(served, change):
    server, state = served
    state["snap"].update(change)
    assert get(server.url + "/ready")[0] == 503


def test_health_503_when_loop_stalls_or_never_ran(served):
    server, state = served
    state["snap"]["heartbeat_age_s"] = 11.0
    code, _, body = get(server.url + "/health")
    assert code == 503 and "11.0 s" in json.loads(body)["detail"]
    state["snap"]["heartbeat_age_s"] = None
    assert get(server.url + "/health")[0] == 503


def test_metrics_prometheus_text(served):
    server, _ = served
    code, ctype, text = get(server.url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    lines = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert lines["crackseg_frames_in_total"] == 120
    assert lines["crackseg_frames_processed_total"] == 118
    assert lines["crackseg_frames_dropped_total"] == 2
    assert lines["crackseg_fps"] == 9.5
    # a histogram (summable across a fleet), not per-vehicle quantile gauges
    assert not any("quantile" in k for k in lines)
    assert lines['crackseg_inference_seconds_bucket{le="0.035"}'] == 0
    assert lines['crackseg_inference_seconds_bucket{le="0.05"}'] == 2
    assert lines['crackseg_inference_seconds_bucket{le="0.1"}'] == 3
    assert lines['crackseg_inference_seconds_bucket{le="+Inf"}'] == 4
    assert lines["crackseg_inference_seconds_count"] == 4
    assert lines["crackseg_inference_seconds_sum"] == pytest.approx(0.2655)
    assert re.search(r"^# TYPE crackseg_inference_seconds histogram$", text, re.M)
    assert "crackseg_measure_seconds" not in text  # no measurement yet: the series is absent, not zero
    assert lines["crackseg_outbox_depth"] == 3
    assert lines["crackseg_outbox_oldest_age_seconds"] == 1.5
    assert lines["crackseg_mqtt_reconnects_total"] == 1
    assert lines["crackseg_process_resident_memory_bytes"] == 212 * 1024 * 1024
    assert lines["crackseg_temperature_celsius"] == 61.2
    assert lines["crackseg_ready"] == 1 and lines["crackseg_alive"] == 1
    assert any(k.startswith("crackseg_model_info{") and 'version="1.2.0"' in k for k in lines)
    assert re.search(r"^# TYPE crackseg_frames_in(_total)? counter$", text, re.M)


def test_metrics_follow_the_snapshot_and_skip_unknowns(served):
    server, state = served
    state["snap"] = {"frames_in": 7, "temperature_c": None}
    text = get(server.url + "/metrics")[2]
    assert "crackseg_frames_in_total 7.0" in text
    assert "crackseg_temperature_celsius" not in text  # unknown on this host: no fake zero
    assert "crackseg_ready 0.0" in text


def test_model_info_is_the_active_manifest(served):
    server, state = served
    code, _, body = get(server.url + "/model/info")
    data = json.loads(body)
    assert code == 200 and data["manifest"]["version"] == "1.2.0" and data["model"]["backend"] == "onnx"
    state["snap"]["model"] = None
    state["snap"]["model_manifest"] = None
    assert get(server.url + "/model/info")[0] == 503


def test_unknown_path_and_broken_snapshot():
    calls = {"n": 0}

    def broken():
        calls["n"] += 1
        raise RuntimeError("stats not ready")

    with HealthServer(HttpConfig(port=0), broken) as server:
        code, _, body = get(server.url + "/nope")
        assert code == 404 and "/health" in json.loads(body)["error"]
        code, _, body = get(server.url + "/health")
        assert code == 500 and "stats not ready" in json.loads(body)["error"]
        assert get(server.url + "/health")[0] == 500  # the server survives
    assert calls["n"] == 2


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(HealthServerError, match=f"127.0.0.1:{port}.*http.port"):
            HealthServer(HttpConfig(port=port), dict).start()


def test_disabled_server_does_not_listen():
    with PortReservation() as would_be:  # the port it is configured with, kept from anyone else
        before = listening_ports()
        server = HealthServer(HttpConfig(enabled=False, port=would_be.port), dict)
        assert server.start() is False
        assert listening_ports() == before and would_be.port not in before  # no listening socket opened
        assert connection_refused(would_be.port)  # and nothing answers there
        server.stop()
        # the same checks see an enabled server on that port (it binds over the reservation)
        enabled = HealthServer(HttpConfig(port=would_be.port), dict)
        assert enabled.start()
        try:
            assert would_be.port in listening_ports() and not connection_refused(would_be.port)
        finally:
            enabled.stop()
