"""Local HTTP endpoints: /health, /ready, /metrics, /model/info.

Standard library ``http.server`` in a daemon thread: four read-only endpoints do not
justify a web framework on a Raspberry Pi, and the server must never hold the agent up at
shutdown. Bound to 127.0.0.1 by default (the unit's firewall-free default is "nothing on
the vehicle network sees this"); set ``http.host`` to expose it to a Prometheus scraper.

Every answer is computed from one call of ``snapshot_fn`` (a plain dict, see
``HealthSnapshot``), so the endpoints never reach into the pipeline's objects and can't
block it.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from edge_agent.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_TIMEOUT_S = 15.0
DEFAULT_CAMERA_STALL_S = 5.0


class HealthSnapshot(TypedDict, total=False):
    """What ``snapshot_fn`` returns. Every key is optional; a missing key reads as "unknown".

    Liveness and readiness:
      heartbeat_age_s          seconds since the processing loop last finished a frame
                               (``FrameWatchdog.heartbeat_age_s()``); None before the first
      model_loaded             the segmentation model is loaded
      camera_last_frame_age_s  seconds since the camera last delivered a frame; None = never
      camera_state             free text of the source's state (e.g. "streaming", "reconnecting")
      outbox_writable          the store-and-forward outbox accepted its last write
    Counters (totals since start) and gauges for /metrics:
      frames_in, frames_processed, frames_dropped   camera frames received / segmented / skipped
      fps                      processed frames per second (recent window)
      inference_ms_p50, inference_ms_p95            inference latency percentiles (ms), for humans
      inference_histogram, measure_histogram        cumulative latency buckets (LatencyHistogram.snapshot())
      outbox_depth             messages waiting for the broker
      outbox_oldest_age_s      age of the oldest waiting message
      mqtt_connected           link to the broker is up
      mqtt_reconnects          reconnections since start
      cpu_percent              this process's CPU use (100 = one core)
      rss_mb                   this process's resident memory (MiB)
      memory_limit_mb          soft memory limit (MiB) from health.memory_limit, if any
      temperature_c            hottest SoC thermal zone
      uptime_s                 seconds since the agent started
    Model:
      model                    ``ModelInfo.to_dict()`` of the active model
      model_manifest           the active bundle's manifest dict (None for a bare model file)
    """

    heartbeat_age_s: float | None
    model_loaded: bool
    camera_last_frame_age_s: float | None
    camera_state: str
    outbox_writable: bool
    frames_in: int
    frames_processed: int
    frames_dropped: int
    fps: float
    inference_ms_p50: float | None
    inference_ms_p95: float | None
    inference_histogram: dict
    measure_histogram: dict
    outbox_depth: int
    outbox_oldest_age_s: float | None
    mqtt_connected: bool
    mqtt_reconnects: int
    cpu_percent: float | None
    rss_mb: float | None
    memory_limit_mb: float | None
    temperature_c: float | None
    uptime_s: float
    model: dict | None
    model_manifest: dict | None


SnapshotFn = Callable[[], HealthSnapshot]


class HealthServerError(UserError, RuntimeError):
    """The endpoints cannot be served (port taken, bad address); the message says what to change."""


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def health_status(snap: HealthSnapshot, heartbeat_timeout_s: float) -> tuple[bool, dict]:
    """Alive = the loop finished a frame less than ``heartbeat_timeout_s`` ago."""
    age = _num(snap.get("heartbeat_age_s"))
    alive = age is not None and age < heartbeat_timeout_s
    body = {"status": "ok" if alive else "stalled", "heartbeat_age_s": age, "heartbeat_timeout_s": heartbeat_timeout_s}
    if age is None:
        body["detail"] = "no frame processed yet"
    elif not alive:
        body["detail"] = f"no frame processed for {age:.1f} s"
    if "uptime_s" in snap:
        body["uptime_s"] = _num(snap.get("uptime_s"))
    return alive, body


def ready_status(snap: HealthSnapshot, camera_stall_s: float) -> tuple[bool, dict]:
    """Ready = model loaded, camera delivering, outbox writable; each check reported."""
    cam_age = _num(snap.get("camera_last_frame_age_s"))
    camera_ok = cam_age is not None and cam_age < camera_stall_s
    if cam_age is None:
        cam_detail = "no frame received yet"
    else:
        cam_detail = f"last frame {cam_age:.1f} s ago (stalled after {camera_stall_s:g} s)"
    if snap.get("camera_state"):
        cam_detail += f"; source {snap.get('camera_state')}"
    checks: dict[str, dict[str, Any]] = {
        "model_loaded": {"ok": snap.get("model_loaded") is True,
                         "detail": "loaded" if snap.get("model_loaded") is True else "model not loaded"},
        "camera_delivering": {"ok": camera_ok, "detail": cam_detail},
        "outbox_writable": {"ok": snap.get("outbox_writable") is True,
                            "detail": "writable" if snap.get("outbox_writable") is True
                            else "outbox not writable (disk full or state dir read-only?)"},
    }
    ready = all(c["ok"] for c in checks.values())
    return ready, {"status": "ready" if ready else "not ready", "checks": checks}


class SnapshotCollector:
    """Turns one snapshot into Prometheus metric families at scrape time (no background state)."""

    def __init__(self, snapshot_fn: SnapshotFn, heartbeat_timeout_s: float, camera_stall_s: float):
        self.snapshot_fn = snapshot_fn
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.camera_stall_s = camera_stall_s

    def describe(self) -> list[Metric]:
        return []  # no static description: families depend on what the snapshot offers

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot_fn()

        def counter(name: str, doc: str, key: str) -> Iterator[Metric]:
            value = _num(snap.get(key))
            if value is not None:
                yield CounterMetricFamily(f"crackseg_{name}", doc, value=value)

        def histogram(name: str, doc: str, value: Any) -> Iterator[Metric]:
            if isinstance(value, dict) and value.get("count"):
                buckets = [(("+Inf" if le == "+Inf" else repr(float(le))), int(n)) for le, n in value["buckets"]]
                yield HistogramMetricFamily(f"crackseg_{name}", doc, buckets=buckets, sum_value=float(value["sum_s"]))

        def gauge(name: str, doc: str, value: Any, scale: float = 1.0) -> Iterator[Metric]:
            v = _num(value)
            if v is not None:
                yield GaugeMetricFamily(f"crackseg_{name}", doc, value=v * scale)

        yield from counter("frames_in", "Frames received from the camera.", "frames_in")
        yield from counter("frames_processed", "Frames segmented and measured.", "frames_processed")
        yield from counter("frames_dropped", "Frames skipped (slow pipeline, bad frames, memory limit).",
                           "frames_dropped")
        yield from counter("mqtt_reconnects", "Reconnections to the MQTT broker.", "mqtt_reconnects")
        yield from gauge("fps", "Processed frames per second (recent window).", snap.get("fps"))
        yield from histogram("inference_seconds", "Inference time per frame (all tiles).",
                             snap.get("inference_histogram"))
        yield from histogram("measure_seconds", "Measurement and reporting time per frame.",
                             snap.get("measure_histogram"))
        yield from gauge("outbox_depth", "Messages waiting in the outbox for the broker.", snap.get("outbox_depth"))
        yield from gauge("outbox_oldest_age_seconds", "Age of the oldest waiting message.",
                         snap.get("outbox_oldest_age_s"))
        yield from gauge("mqtt_connected", "1 while connected to the broker.", snap.get("mqtt_connected"))
        yield from gauge("process_cpu_percent", "CPU use of the agent (100 = one core).", snap.get("cpu_percent"))
        yield from gauge("process_resident_memory_bytes", "Resident memory of the agent.", snap.get("rss_mb"),
                         1024.0 * 1024.0)
        yield from gauge("memory_limit_bytes", "Soft memory limit (health.memory_limit).",
                         snap.get("memory_limit_mb"), 1024.0 * 1024.0)
        yield from gauge("temperature_celsius", "Hottest SoC thermal zone.", snap.get("temperature_c"))
        yield from gauge("heartbeat_age_seconds", "Seconds since the loop last finished a frame.",
                         snap.get("heartbeat_age_s"))
        yield from gauge("camera_last_frame_age_seconds", "Seconds since the camera last delivered a frame.",
                         snap.get("camera_last_frame_age_s"))
        yield from gauge("uptime_seconds", "Seconds since the agent started.", snap.get("uptime_s"))
        alive, _ = health_status(snap, self.heartbeat_timeout_s)
        ready, _ = ready_status(snap, self.camera_stall_s)
        yield GaugeMetricFamily("crackseg_alive", "1 when /health answers 200.", value=float(alive))
        yield GaugeMetricFamily("crackseg_ready", "1 when /ready answers 200.", value=float(ready))
        model = snap.get("model")
        if isinstance(model, dict):
            labels = ["name", "version", "backend", "precision"]
            info = GaugeMetricFamily("crackseg_model_info", "The active model (value is always 1).", labels=labels)
            info.add_metric([str(model.get(k, "")) for k in labels], 1.0)
            yield info


class _Handler(BaseHTTPRequestHandler):
    server_version = "crackseg-edge"
    timeout = 10  # a stuck client must not hold a thread forever

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http %s - %s", self.address_string(), format % args)

    def _answer(self, head: bool) -> None:
        app: HealthServer = self.server.app  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(app.registry), content_type, head)
                return
            status, body = app.route(path)
        except Exception as exc:  # noqa: BLE001 - a broken snapshot must answer 500, not kill the thread
            log.exception("http %s failed", path)
            status, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
        self._send(status, (json.dumps(body, indent=1, default=str) + "\n").encode(), "application/json", head)

    def _send(self, status: int, payload: bytes, content_type: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is routine (a scraper's timeout, curl ^C): one debug
        line, not a traceback on stderr outside the logger. Anything else is logged once."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("http: %s went away: %s", client_address, exc)
        else:
            log.exception("http: request from %s failed", client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class HealthServer:
    """Serves the endpoints from ``snapshot_fn`` in a daemon thread.

    ``config`` is the ``AgentConfig`` (then the thresholds come from ``health.heartbeat_timeout_s``
    and ``camera.stall_timeout_s``) or just its ``HttpConfig`` (then pass the thresholds).
    """

    def __init__(self, config: Any, snapshot_fn: SnapshotFn, *, heartbeat_timeout_s: float | None = None,
                 camera_stall_s: float | None = None):
        http_cfg = getattr(config, "http", config)
        self.host: str = http_cfg.host
        self.requested_port: int = http_cfg.port
        self.enabled: bool = getattr(http_cfg, "enabled", True)
        health = getattr(config, "health", None)
        camera = getattr(config, "camera", None)
        self.heartbeat_timeout_s = float(heartbeat_timeout_s or getattr(health, "heartbeat_timeout_s", None)
                                         or DEFAULT_HEARTBEAT_TIMEOUT_S)
        self.camera_stall_s = float(camera_stall_s or getattr(camera, "stall_timeout_s", None)
                                    or DEFAULT_CAMERA_STALL_S)
        self.snapshot_fn = snapshot_fn
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot_fn, self.heartbeat_timeout_s, self.camera_stall_s))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.started_at = time.monotonic()

    # -- routing (pure, testable without sockets) --
    def route(self, path: str) -> tuple[int, dict]:
        if path == "/health":
            alive, body = health_status(self.snapshot_fn(), self.heartbeat_timeout_s)
            return (200 if alive else 503), body
        if path == "/ready":
            ready, body = ready_status(self.snapshot_fn(), self.camera_stall_s)
            return (200 if ready else 503), body
        if path == "/model/info":
            snap = self.snapshot_fn()
            if not snap.get("model") and not snap.get("model_manifest"):
                return 503, {"error": "no model loaded yet"}
            return 200, {"model": snap.get("model"), "manifest": snap.get("model_manifest")}
        if path == "/":
            return 200, {"endpoints": ["/health", "/ready", "/metrics", "/model/info"]}
        return 404, {"error": f"no such endpoint {path}; try /health, /ready, /metrics, /model/info"}

    # -- lifecycle --
    @property
    def port(self) -> int:
        """The bound port (the real one when ``http.port`` is 0)."""
        return self._server.server_address[1] if self._server else self.requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> bool:
        """Bind and serve; False when ``http.enabled`` is false. Raises HealthServerError on bind failure."""
        if not self.enabled or self._server is not None:
            return self._server is not None
        cls = _Server6 if ":" in self.host else _Server
        try:
            server = cls((self.host, self.requested_port), _Handler)
        except OSError as exc:
            raise HealthServerError(f"http: cannot listen on {self.host}:{self.requested_port} "
                                    f"({exc.strerror or exc}); is another crackseg-edge running? set http.port to "
                                    "a free port or http.enabled: false") from None
        server.app = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="http-health", daemon=True)
        self._thread.start()
        log.info("health endpoints on %s (/health /ready /metrics /model/info)", self.url)
        return True

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
