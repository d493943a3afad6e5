"""The whole agent end to end: a video file in, detections out through a real broker.

``crackseg-edge run`` is started as its own process, exactly as on a vehicle (config file,
``--max-frames``), with every frame reported (``reporting.every_frame: true``: the heaviest
MQTT load, and each frame becomes one message a subscriber can time). The bench subscribes
to the device's ``detections`` topic before the agent starts and measures:

- **cold start**: from the moment the process is spawned to the first detections message
  received by the subscriber (interpreter start, imports, model load, camera open, broker
  connect, first inference, measurement, outbox, broker);
- **frames/s out**: messages received per second after the first few (steady state), i.e.
  frames fully processed and delivered; frames/s in is taken from the agent's summary when
  it reports it;
- **peak RSS**: the kernel's high-water mark of the agent process (``VmHWM``, read while it
  runs, so no peak between samples is missed), and its CPU time per frame: in steady state
  (after the first detection arrived) and including start-up (``wait4`` rusage).

``overhead_fraction`` compares the agent's time per frame with the bare model's median
latency (same artifact, same threads, same frames): ``(t_agent - t_bare) / t_bare``, i.e.
``bare_fps / agent_fps - 1``: the share of the bare model time that capture, decoding,
measurement, MQTT and the outbox add. ``fps_loss = 1 - agent_fps / bare_fps`` is also given.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from bench import BenchError

DEVICE_ID = "bench-agent"
TOPIC_PREFIX = "crackseg"


@dataclass
class AgentRun:
    """One agent process on one model artifact."""

    variant: str
    backend: str
    precision: str
    size: list[int]
    frames: int
    detections_received: int
    fps_out: float | None
    fps_in: float | None
    bare_fps: float | None
    overhead_fraction: float | None
    fps_loss: float | None
    rss_peak_mb: float
    cold_start_s: float | None
    cpu_ms_per_frame: float | None              # steady state (after the first detection)
    cpu_ms_per_frame_with_startup: float | None
    wall_s: float
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def write_agent_config(path: Path, *, model: Path, backend: str, threads: int, video: Path, broker_url: str,
                       state_dir: Path) -> Path:
    """A device config for the run: the artifact, the clip as fast as it decodes, every frame reported."""
    cfg = {
        "device_id": DEVICE_ID,
        "model": {"path": str(model), "backend": backend, "threads": threads},
        "camera": {"source": str(video), "realtime": False, "queue_policy": "block"},
        "reporting": {"every_frame": True},
        "mqtt": {"url": broker_url, "topic_prefix": TOPIC_PREFIX},
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "state_dir": str(state_dir),
        "logging": {"level": "WARNING"},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class DetectionListener:
    """Subscribes to the device's detections and records when each message arrives (monotonic s)."""

    def __init__(self, broker_url: str, device_id: str = DEVICE_ID):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from edge_agent.config.mqtt import parse_broker_url

        _, host, port = parse_broker_url(broker_url)
        self.topic = f"{TOPIC_PREFIX}/{device_id}/detections"
        self.arrivals: list[float] = []
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-listener-{os.getpid()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10.0):
            self.close()
            raise BenchError(f"could not subscribe to {self.topic} on {broker_url}")

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001 - paho callback
        now = time.monotonic()
        with self._lock:
            self.arrivals.append(now)

    def times(self) -> list[float]:
        with self._lock:
            return list(self.arrivals)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def steady_fps(arrivals: list[float], skip: int) -> float | None:
    """Messages per second after the first ``skip`` (start-up) ones."""
    if len(arrivals) - skip < 2:
        skip = 0
    if len(arrivals) < 2:
        return None
    span = arrivals[-1] - arrivals[skip]
    return round((len(arrivals) - 1 - skip) / span, 3) if span > 0 else None


def _peak_rss_kib(pid: int) -> int | None:
    """VmHWM (the kernel's RSS high-water mark of this process image) from /proc, in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _watch_child(pid: int, timeout_s: float,
                 started: Callable[[], bool] = lambda: False) -> tuple[int, object, int, float | None]:
    """Wait for the child (``wait4``, polled); kills it after ``timeout_s``.

    Returns (exit code, rusage, peak RSS KiB, CPU seconds the child had used when ``started()``
    first returned True: the first detection arrived, so start-up cost can be taken out).

    Peak RSS is read from VmHWM while the child runs, not from ``ru_maxrss``: on Linux that
    field also counts the memory of the forking parent (this bench, with torch loaded) before
    ``exec``, so it would report the bench, not the agent.
    """
    import psutil

    deadline = time.monotonic() + timeout_s
    peak, cpu_at_start = 0, None
    while True:
        if cpu_at_start is None and started():
            try:
                t = psutil.Process(pid).cpu_times()
                cpu_at_start = t.user + t.system
            except psutil.Error:
                cpu_at_start = None
        hwm = _peak_rss_kib(pid)
        if hwm is None:
            try:
                hwm = psutil.Process(pid).memory_info().rss // 1024
            except psutil.Error:
                hwm = None
        if hwm:
            peak = max(peak, hwm)
        wpid, status, usage = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            return os.waitstatus_to_exitcode(status), usage, peak, cpu_at_start
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.wait4(pid, 0)
            raise BenchError(f"the agent did not finish within {timeout_s:.0f} s (killed)")
        time.sleep(0.02)


def run_agent(*, name: str, model: Path, backend: str, precision: str, size: tuple[int, int], threads: int,
              video: Path, frames: int, broker_url: str, workdir: Path, bare_ms: float | None,
              timeout_s: float = 600.0) -> AgentRun:
    """Run ``crackseg-edge run`` on ``video`` with ``model`` and measure it (see the module docstring)."""
    import subprocess

    run_dir = workdir / f"agent-{name}-{size[0]}x{size[1]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = write_agent_config(run_dir / "config.yaml", model=model, backend=backend, threads=threads, video=video,
                             broker_url=broker_url, state_dir=run_dir / "state")
    listener = DetectionListener(broker_url)
    out_path, err_path = run_dir / "stdout.txt", run_dir / "stderr.txt"
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(cfg),
                                     "--max-frames", str(frames)], stdout=out, stderr=err, cwd=run_dir)
            code, usage, peak_kib, cpu_at_first = _watch_child(proc.pid, timeout_s,
                                                               started=lambda: bool(listener.arrivals))
            proc.returncode = code
            wall = time.monotonic() - t0
        # the last messages may still be on their way to the subscriber when the agent exits
        deadline = time.monotonic() + 3.0
        while len(listener.times()) < frames and time.monotonic() < deadline:
            time.sleep(0.02)
        arrivals = listener.times()
    finally:
        listener.close()
    stderr_tail = err_path.read_text(errors="replace").strip().splitlines()[-3:]
    if code != 0:
        raise BenchError(f"the agent ({name}) exited with {code}: {' | '.join(stderr_tail) or 'no message'} "
                         f"(config {cfg})")
    lines = out_path.read_text(errors="replace").strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else {}
    except ValueError:
        summary = {}
    if not isinstance(summary, dict) or "frames" not in summary:
        raise BenchError(f"the agent ({name}) did not print its JSON summary as the last stdout line ({out_path})")
    done = int(summary.get("frames") or 0)
    skip = min(5, max(1, len(arrivals) // 5))
    fps_out = steady_fps(arrivals, skip)
    bare_fps = 1000.0 / bare_ms if bare_ms else None
    overhead = round(bare_fps / fps_out - 1.0, 4) if bare_fps and fps_out else None
    loss = round(1.0 - fps_out / bare_fps, 4) if bare_fps and fps_out else None
    cpu_s = usage.ru_utime + usage.ru_stime
    # steady state: CPU after the first detection over the frames after the first one
    steady_cpu = (round((cpu_s - cpu_at_first) * 1000.0 / (done - 1), 2)
                  if cpu_at_first is not None and done > 1 else None)
    return AgentRun(
        variant=name, backend=backend, precision=precision, size=list(size), frames=done,
        detections_received=len(arrivals), fps_out=fps_out,
        fps_in=summary.get("fps_in"), bare_fps=None if bare_fps is None else round(bare_fps, 3),
        overhead_fraction=overhead, fps_loss=loss,
        rss_peak_mb=round(max(peak_kib / 1024.0, float(summary.get("rss_mb") or 0.0)), 1),
        cold_start_s=round(arrivals[0] - t0, 3) if arrivals else None,
        cpu_ms_per_frame=steady_cpu, cpu_ms_per_frame_with_startup=round(cpu_s * 1000.0 / done, 2) if done else None,
        wall_s=round(wall, 2),
        summary={k: v for k, v in summary.items() if k != "model"})
