"""The whole agent end to end: the bench's road clip in, detections out through a private broker.

``crackseg-edge run`` is started as its own process, exactly as on a vehicle: the default x86
device config (``device_configs/x86-dev.yaml``, or ``--agent-config``) with only what a bench
run must change: the clip as the source with pacing off (``camera.realtime: false``, no
``camera.fps`` cap, a blocking queue, speed-adaptive selection off: every frame is processed),
the model under test (``model.path/backend/precision/threads/workers``), the private broker,
every frame reported (``reporting.every_frame: true``: each frame becomes one message a
subscriber can time) and a state folder of its own. The bench subscribes to the device's
``detections`` topic before the agent starts and reads the agent's JSON summary at the end:

- **fps**: the agent's own ``fps_out`` from its summary (frames measured and handed to the
  outbox per second); the subscriber's steady rate (messages received per second after the
  first few) is kept beside it as ``fps_delivered``;
- **cold start**: from spawning the process to the first detections message received
  (interpreter, imports, model load, camera open, broker connect, first frame end to end);
- **peak RSS**: the kernel's high-water mark of the agent process (``VmHWM``, read while it
  runs), and its CPU time per frame in steady state (after the first detection).

``overhead_fraction`` compares the agent's time per frame with the bare model's at the same
size, threads and workers: ``bare_fps / agent_fps - 1`` (the share of the bare model's time
that decoding, measurement, MQTT and the outbox add). For one worker the bare figure is the
variant's median latency; for N workers it is N threads segmenting in parallel with the same
model copies the agent's workers get (``bench.models.pool_fps``).
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

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO_ROOT / "device_configs" / "x86-dev.yaml"
DEVICE_ID = "bench-agent"
TOPIC_PREFIX = "crackseg"


@dataclass(frozen=True)
class AgentSetup:
    """One agent configuration: which model, how many inference workers and threads each."""

    variant: str
    backend: str
    precision: str
    model: Path  # a model file or a bundle folder
    from_bundle: bool
    workers: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.variant} w{self.workers}x{self.threads}t"


@dataclass
class AgentRun:
    """One agent process on one configuration."""

    config: str
    variant: str
    backend: str
    precision: str
    workers: int
    threads: int
    size: list[int]
    frames: int
    detections_received: int
    fps: float | None           # the agent's summary fps_out (falls back to fps_delivered)
    fps_source: str
    fps_delivered: float | None  # the subscriber's steady rate
    bare_fps: float | None
    overhead_fraction: float | None
    fps_loss: float | None
    rss_peak_mb: float
    cold_start_s: float | None
    cpu_ms_per_frame: float | None              # steady state (after the first detection)
    cpu_ms_per_frame_with_startup: float | None
    cracks_per_frame: float | None
    inference_ms_p50: float | None
    measure_ms_p50: float | None
    wall_s: float
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def config_supports() -> dict[str, bool]:
    """Which optional keys this agent's config knows (others may still be adding them)."""
    from edge_agent.config.agent import AgentConfig
    from edge_agent.config.sections import ModelConfig

    return {"workers": "workers" in ModelConfig.model_fields, "coverage": "coverage" in AgentConfig.model_fields}


def write_agent_config(path: Path, setup: AgentSetup, *, video: Path, broker_url: str, state_dir: Path,
                       base: Path = BASE_CONFIG, supports: dict[str, bool] | None = None) -> Path:
    """The base device config with the bench's changes (see the module docstring). ``supports``:
    the optional keys the agent that will read it knows (default: this checkout's)."""
    try:
        cfg = yaml.safe_load(base.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BenchError(f"--agent-config {base}: unreadable ({exc})") from None
    supports = supports if supports is not None else config_supports()
    model = {**(cfg.get("model") or {}), "path": str(setup.model), "backend": setup.backend,
             "threads": setup.threads, "precision": setup.precision if setup.from_bundle else None}
    if setup.backend == "tflite":
        model.pop("providers", None)
    if supports["workers"]:
        model["workers"] = setup.workers
    elif setup.workers != 1:
        raise BenchError("this agent's config has no model.workers: only one inference worker can be run")
    cfg.update({
        "device_id": DEVICE_ID, "model": model,
        "camera": {"source": str(video), "realtime": False, "queue_policy": "block"},
        "reporting": {**(cfg.get("reporting") or {}), "every_frame": True},
        "mqtt": {"url": broker_url, "topic_prefix": TOPIC_PREFIX},
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "state_dir": str(state_dir), "logging": {"level": "WARNING"},
    })
    if supports["coverage"]:
        cfg["coverage"] = {**(cfg.get("coverage") or {}), "enabled": False}
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


def _summary(out_path: Path, name: str) -> dict:
    lines = out_path.read_text(errors="replace").strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else {}
    except ValueError:
        summary = {}
    if not isinstance(summary, dict) or "frames" not in summary:
        raise BenchError(f"the agent ({name}) did not print its JSON summary as the last stdout line ({out_path})")
    return summary


def _number(x: object) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and x > 0 else None


def run_agent(setup: AgentSetup, *, size: tuple[int, int], video: Path, frames: int, broker_url: str, workdir: Path,
              bare_fps: float | None, base_config: Path = BASE_CONFIG, timeout_s: float = 600.0) -> AgentRun:
    """Run ``crackseg-edge run`` on ``video`` with ``setup`` and measure it (see the module docstring)."""
    import subprocess

    run_dir = workdir / f"agent-{size[0]}x{size[1]}-{setup.name.replace(' ', '-')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = write_agent_config(run_dir / "config.yaml", setup, video=video, broker_url=broker_url,
                             state_dir=run_dir / "state", base=base_config)
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
    if code != 0:
        tail = err_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise BenchError(f"the agent ({setup.name}) exited with {code}: {' | '.join(tail) or 'no message'} "
                         f"(config {cfg})")
    summary = _summary(out_path, setup.name)
    done = int(summary.get("frames") or 0)
    failed = {k: summary.get(k) for k in ("inference_errors", "frame_errors", "report_errors") if summary.get(k)}
    if done < frames or failed:
        tail = [line for line in err_path.read_text(errors="replace").splitlines() if "ERROR" in line][:1]
        raise BenchError(f"the agent ({setup.name}) processed {done} of {frames} frames "
                         f"({', '.join(f'{k} {v}' for k, v in failed.items()) or 'no errors counted'}): "
                         f"{' | '.join(tail) or 'see ' + str(err_path)}")
    delivered = steady_fps(arrivals, min(5, max(1, len(arrivals) // 5)))
    own = _number(summary.get("fps_out"))
    fps = own or delivered
    overhead = round(bare_fps / fps - 1.0, 4) if bare_fps and fps else None
    loss = round(1.0 - fps / bare_fps, 4) if bare_fps and fps else None
    cpu_s = usage.ru_utime + usage.ru_stime  # type: ignore[attr-defined]
    # steady state: CPU after the first detection over the frames after the first one
    steady_cpu = (round((cpu_s - cpu_at_first) * 1000.0 / (done - 1), 2)
                  if cpu_at_first is not None and done > 1 else None)
    cracks = summary.get("cracks")
    return AgentRun(
        config=setup.name, variant=setup.variant, backend=setup.backend, precision=setup.precision,
        workers=setup.workers, threads=setup.threads, size=list(size), frames=done,
        detections_received=len(arrivals), fps=None if fps is None else round(fps, 3),
        fps_source="agent summary fps_out" if own else "subscriber (summary had no fps_out)",
        fps_delivered=delivered, bare_fps=None if bare_fps is None else round(bare_fps, 3),
        overhead_fraction=overhead, fps_loss=loss,
        rss_peak_mb=round(max(peak_kib / 1024.0, float(summary.get("rss_mb") or 0.0)), 1),
        cold_start_s=round(arrivals[0] - t0, 3) if arrivals else None,
        cpu_ms_per_frame=steady_cpu, cpu_ms_per_frame_with_startup=round(cpu_s * 1000.0 / done, 2) if done else None,
        cracks_per_frame=round(cracks / done, 2) if isinstance(cracks, int) and done else None,
        inference_ms_p50=summary.get("inference_ms_p50"), measure_ms_p50=summary.get("measure_ms_p50"),
        wall_s=round(wall, 2), summary={k: v for k, v in summary.items() if k != "model"})
