"""The edge agent's composition root: named start steps, stopped in reverse order.

``start()`` runs the steps below in order; each returns how to undo itself. A failing step
undoes the ones before it (in reverse), so a refused start leaves no camera open, no broker
link and no retained status behind. ``shutdown()`` runs the same teardowns in reverse: the
pipeline drains first, then every segmented frame's message is flushed to the broker (or
stays in the outbox for the next start) and the run summary is taken, then the link, the
position receiver, the camera and the update manager close.

Local resources (the HTTP port, the outbox file lock, the model, the camera) are taken
before the broker is contacted: a second agent on the same host fails before it can publish
anything under the running agent's device id.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import cv2

from edge_agent.agent.commands import AgentCommands, CommandRegistry, ConfigHolder, PauseSwitch
from edge_agent.agent.coverage import (
    CoverageSettings,
    CoverageTracker,
    FrameSelector,
    coverage_so_far,
    driven_m,
)
from edge_agent.agent.health import HealthCollector
from edge_agent.agent.pipeline import InferenceStage, ModelSlot, ReportStage, Segmented
from edge_agent.agent.reporter import Reporter
from edge_agent.agent.setup import AgentError, prepare_camera_config
from edge_agent.agent.stats import PipelineStats
from edge_agent.comms import Communicator, open_communicator
from edge_agent.config.agent import AgentConfig
from edge_agent.detectors import Segmenter
from edge_agent.position import PositionProvider, create_position_provider
from edge_agent.service.notify import Notifier
from edge_agent.service.watchdog import FrameWatchdog
from edge_agent.stats import system
from edge_agent.video.capture import FrameCapture
from edge_agent.video.factory import capture_from_config

if TYPE_CHECKING:
    from edge_agent.service.http import HealthServer, HealthSnapshot
    from edge_agent.updates.manager import UpdateManager

log = logging.getLogger(__name__)

Teardown = Callable[[], None]


def _process_start() -> float:
    """When this process started (cold-start figures count from exec, not from import)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:
        return time.time()


PROCESS_START = _process_start()

__all__ = ["PROCESS_START", "Agent", "AgentError", "prepare_camera_config"]


class Agent:
    """Camera -> model -> measurement -> MQTT, with health, commands and updates around it."""

    def __init__(self, cfg: AgentConfig, config_path: str | Path | None = None, max_frames: int | None = None,
                 overrides: dict | None = None, flush_timeout_s: float = 30.0):
        self.config = ConfigHolder(prepare_camera_config(cfg), Path(config_path) if config_path else None,
                                   dict(overrides or {}))
        self.max_frames = max_frames
        self.flush_timeout_s = flush_timeout_s
        self.stats = PipelineStats()
        self.notifier = Notifier()
        self.watchdog = FrameWatchdog(self.notifier)
        self.pause = PauseSwitch()
        self.summary: dict[str, Any] = {}
        # Set by the start steps, in this order:
        self.http: HealthServer | None = None
        self.updates: UpdateManager | None = None
        self.model: ModelSlot | None = None
        self.capture: FrameCapture | None = None
        self.selector: FrameSelector | None = None
        self.coverage = CoverageTracker()
        self.position: PositionProvider | None = None
        self.comms: Communicator | None = None
        self.registry: CommandRegistry | None = None
        self.reporter: Reporter | None = None
        # Frames between inference and measurement: two are enough to keep both busy; more only
        # add latency and memory (a 720p frame with its maps is ~4.5 MB).
        self.segmented: queue.Queue[Segmented | object] = queue.Queue(maxsize=2)
        self.inference: InferenceStage | None = None
        self.report: ReportStage | None = None
        self.health: HealthCollector | None = None
        self._health_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready_sent = False
        self._teardown: list[tuple[str, Teardown]] = []

    @property
    def cfg(self) -> AgentConfig:
        """The running config (reload-config replaces the parts that can change while running)."""
        return self.config.current

    # -- lifecycle -------------------------------------------------------------------------
    def start_steps(self) -> list[tuple[str, Callable[[], Teardown | None]]]:
        """The named steps of ``start()``, in order."""
        return [("state-dir", self._start_state_dir), ("http", self._start_http), ("updates", self._start_updates),
                ("model", self._start_model), ("position", self._start_position), ("camera", self._start_camera),
                ("communicator", self._start_communicator), ("commands", self._start_commands),
                ("link", self._start_link), ("delivery", self._start_delivery), ("pipeline", self._start_pipeline),
                ("health-loop", self._start_health_loop)]

    def start(self) -> None:
        for name, step in self.start_steps():
            log.debug("start: %s", name)
            try:
                teardown = step()
            except BaseException:
                self._run_teardown()
                raise
            if teardown is not None:
                self._teardown.append((name, teardown))

    def wait(self) -> None:
        """Until the source ends, ``max_frames`` is reached, or ``request_stop()``."""
        inference = self.inference
        while inference is not None and not self._stop.is_set() and inference.is_alive():
            inference.join(timeout=0.5)

    def request_stop(self, *_args: object) -> None:
        self._stop.set()

    def shutdown(self) -> dict[str, Any]:
        """Undo every started step in reverse; returns the run summary."""
        self.notifier.stopping("stopping: flushing detections")
        self._stop.set()
        self._run_teardown()
        self.notifier.close()
        return self.summary

    def _run_teardown(self) -> None:
        while self._teardown:
            name, teardown = self._teardown.pop()
            log.debug("stop: %s", name)
            try:
                teardown()
            except Exception:
                log.exception("stopping %s failed", name)

    # -- start steps -----------------------------------------------------------------------
    def _start_state_dir(self) -> None:
        Path(self.cfg.state_dir).mkdir(parents=True, exist_ok=True)
        # The pipeline's stages are the parallelism: OpenCV's own thread pool inside a
        # measurement or a resize would only compete with the model's threads for the cores.
        cv2.setNumThreads(1)

    def _start_http(self) -> Teardown | None:
        if not self.cfg.http.enabled:
            return None
        from edge_agent.service.http import HealthServer  # prometheus-client only when served

        self.http = HealthServer(self.cfg, self._health_flat)
        self.http.start()
        return self.http.stop

    def _start_updates(self) -> Teardown | None:
        updates_cfg = self.cfg.updates
        if not updates_cfg.enabled:
            return None
        from edge_agent.updates.manager import UpdateManager

        self.updates = UpdateManager(self.cfg, load_model=self._load_model, swap_model=self._swap_model,
                                     report=self._report_update)
        return self.updates.close

    def _start_model(self) -> None:
        path = self.updates.resolve_startup_model() if self.updates is not None else None
        segmenter = self._load_model(path)
        expected = self.cfg.model.expected_version
        if expected and segmenter.info.version != expected:
            raise AgentError(f"model version {segmenter.info.version} is not the expected {expected} "
                             "(model.expected_version / MODEL_VERSION)")
        self.model = ModelSlot(segmenter)
        log.info("model %s %s on %s (%s), %s", segmenter.info.name, segmenter.info.version, segmenter.backend_name,
                 segmenter.info.precision, segmenter.info.strategy)

    def _start_camera(self) -> Teardown:
        cfg = self.cfg
        cov, measure = cfg.coverage, cfg.measurement
        settings = CoverageSettings(enabled=cov.enabled, overlap=cov.overlap, speed_mps=cov.speed_mps,
                                    stopped_interval_s=cov.stopped_interval_s,
                                    gsd_along_mm=measure.gsd_along_travel, travel_axis=measure.travel_axis)
        self.selector = FrameSelector(settings, self._position().speed_at)
        self.capture = capture_from_config(cfg.camera, selector=self.selector)
        self.capture.start()
        return self.capture.stop

    def _start_position(self) -> Teardown:
        self.position = create_position_provider(self.cfg.position)
        self.position.start()
        return self.position.stop

    def _start_communicator(self) -> Teardown:
        comms = open_communicator(self.cfg.mqtt, self.cfg.device_id, state_dir=self.cfg.state_dir,
                                  status={"model": self._model_status()})
        self.comms = comms

        def stop() -> None:
            comms.stop(flush_timeout=0.5)  # what the broker has not acknowledged stays in the outbox

        return stop

    def _start_commands(self) -> None:
        registry = CommandRegistry(verify=self._command_verifier(), audit=self._audit)
        run_id = f"{self.cfg.device_id}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(PROCESS_START))}"
        self.reporter = Reporter(self._comms(), self._position(), self.cfg.measurement, self.cfg.reporting,
                                 self.stats, run_id)
        AgentCommands(stats=self.stats, health_payload=self._health_payload, pause=self.pause,
                      reporter=self.reporter, model=self._model_slot(), config=self.config).register(registry)
        if self.updates is not None:
            self.updates.register_commands(registry)
        else:  # model-status still answers (stage "disabled"); model-changing commands say why not
            from edge_agent.updates.commands import register_disabled_commands

            register_disabled_commands(registry, self._model_status)
        self.registry = registry
        self._comms().subscribe_commands(registry)

    def _start_link(self) -> None:
        self._comms().start()

    def _start_delivery(self) -> Teardown:
        """Nothing to start; stopping flushes the outbox and takes the summary (after the pipeline drained)."""
        return self._finish_delivery

    def _start_pipeline(self) -> Teardown:
        capture, reporter = self._capture(), self.reporter
        assert reporter is not None
        self.inference = InferenceStage(capture, self._model_slot(), self.segmented, self.stats,
                                        on_frame_done=self._frame_done, max_frames=self.max_frames,
                                        on_inference_failure=self._inference_failed, paused=self.pause.event,
                                        workers=self.cfg.model.workers, coverage=self.coverage,
                                        footprint=lambda: self.selector.footprint if self.selector else None)
        self.report = ReportStage(self.segmented, reporter, self.stats)
        self.health = HealthCollector(self.stats, capture, self._comms(), self._model_info, self._model_manifest,
                                      self.segmented.qsize, self.cfg.health.memory_limit,
                                      paused=lambda: self.pause.paused, extra=self._health_extra,
                                      coverage=lambda: coverage_so_far(self.coverage, self.selector, window=True))
        self.report.start()
        self.inference.start()
        return self._stop_pipeline

    def _start_health_loop(self) -> Teardown:
        thread = threading.Thread(target=self._health_loop, name="health", daemon=True)
        self._health_thread = thread
        thread.start()

        def stop() -> None:
            self._stop.set()
            thread.join(timeout=5)

        return stop

    # -- teardown helpers ------------------------------------------------------------------
    def _stop_pipeline(self) -> None:
        inference, report = self.inference, self.report
        if inference is not None:
            inference.stop()
            inference.join(timeout=10)
        if report is not None:
            report.join(timeout=30)
        self.watchdog.stop()

    def _finish_delivery(self) -> None:
        comms, capture = self._comms(), self._capture()
        delivered = comms.flush(self.flush_timeout_s)
        link, cam, s = comms.stats(), capture.stats(), self.stats.snapshot()
        inference = self.inference
        self.summary = {
            "frames": s["frames_processed"], "frames_in": s["frames_in"],
            "detection_messages": s["detection_messages"], "detections_published": link.acked,
            "pending": link.outbox_depth, "dropped": cam.frames_dropped + link.dropped,
            "frames_dropped": cam.frames_dropped, "outbox_dropped": link.dropped,
            "frames_skipped_coverage": cam.frames_skipped_coverage, "frames_skipped_fps": cam.frames_skipped,
            "coverage": coverage_so_far(self.coverage, self.selector), "driven_m": driven_m(self.selector),
            "outbox_corrupt": link.outbox_corrupt, "outbox_lost_files": link.outbox_lost_files,
            "frame_errors": s["frame_errors"], "inference_errors": s["inference_errors"],
            "report_errors": s["report_errors"],
            "cracks": s["cracks_reported"], "new_cracks": s["new_cracks"],
            # the run's own rates, first to last frame (the health's 10 s window would read 0 after a long flush)
            "fps_in": round(self.stats.frames_in.average_rate(), 2),
            "fps_out": round(self.stats.frames_out.average_rate(), 2), "inference_ms_p50": s["inference_ms_p50"],
            "inference_ms_p95": s["inference_ms_p95"], "measure_ms_p50": s["measure_ms_p50"],
            "first_frame_s": None if self.stats.first_frame_s is None else round(self.stats.first_frame_s, 3),
            "elapsed_s": round(time.time() - PROCESS_START, 2), "rss_mb": round(system.process_rss_mb(), 1),
            "delivered": delivered, "source_end": inference.end.reason if inference and inference.end else None,
            "model": self._model_info(),
        }

    # -- pipeline callbacks ----------------------------------------------------------------
    def _frame_done(self) -> None:
        self.watchdog.heartbeat()
        if not self._ready_sent:
            self._ready_sent = True
            self.stats.first_frame_s = time.time() - PROCESS_START
            self.notifier.ready(status=f"first frame processed; model {self._model_info()['name']}")
            self.watchdog.start()

    def _inference_failed(self, exc: Exception, consecutive: int) -> None:
        if self.updates is not None:
            self.updates.on_inference_error(consecutive)

    # -- periodic --------------------------------------------------------------------------
    def _health_loop(self) -> None:
        next_health = time.monotonic() + min(5.0, self.cfg.health.interval_s)
        while not self._stop.wait(1.0):
            self._check_memory()
            if self.updates is not None:
                try:
                    self.updates.observe(self.stats.snapshot())
                except Exception:
                    log.exception("update watch failed")
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + self.cfg.health.interval_s
                try:
                    self._comms().publish_health(self._health_payload())
                    if self.health is not None:
                        line = self.health.status_line()
                        self.notifier.status(line)
                        log.info("progress: %s", line)  # a long run is never silent until its summary
                except Exception:
                    log.exception("health report failed")

    def _check_memory(self) -> None:
        limit = self.cfg.health.memory_limit
        if not limit:
            return
        rss = system.process_rss_mb() * 2**20
        if rss > limit and not self.pause.by_memory:
            self.pause.set(memory=True)
            log.warning("RSS %.0f MB is above the memory limit %.0f MB: not accepting frames until it drops",
                        rss / 2**20, limit / 2**20)
        elif self.pause.by_memory and rss < 0.9 * limit:
            self.pause.set(memory=False)
            log.warning("RSS back under the memory limit: accepting frames again")

    # -- health and model info -------------------------------------------------------------
    def _health_flat(self) -> HealthSnapshot:
        """What the HTTP endpoints read; 'not ready' until the pipeline exists."""
        if self.health is None:
            return {"model_loaded": self.model is not None, "heartbeat_age_s": None, "camera_last_frame_age_s": None,
                    "outbox_writable": False, "uptime_s": self.stats.snapshot()["uptime_s"],
                    "model": self._model_info() if self.model is not None else None, "model_manifest": None}
        return cast("HealthSnapshot", self.health.flat())

    def _health_payload(self) -> dict:
        if self.health is None:
            return {"state": "starting", "uptime_s": self.stats.snapshot()["uptime_s"]}
        return self.health.payload()

    def _model_info(self) -> dict:
        seg = self._model_slot().get()
        return {**seg.info.to_dict(), "threshold": seg.threshold}

    def _model_manifest(self) -> dict | None:
        return self._model_slot().get().info.manifest

    def _model_status(self) -> dict:
        info = self._model_info()
        return {k: info[k] for k in ("name", "version", "backend", "precision")}

    def _health_extra(self) -> dict:
        return {} if self.updates is None else {"update": self.updates.status()}

    # -- over-the-air updates (edge_agent.updates) -----------------------------------------
    def _load_model(self, path: Path | None) -> Segmenter:
        from edge_agent.updates.device import model_loader

        measure = self.cfg.measurement
        return model_loader(self.cfg.model, gsd_mm_per_px=(measure.gsd_x, measure.gsd_y),
                            choice_cache=Path(self.cfg.state_dir))(path)

    def _swap_model(self, segmenter: Segmenter) -> None:
        old = self._model_slot().swap(segmenter)
        comms = self._comms()
        comms.set_status(model=self._model_status())
        comms.publish("status", {"state": "online", "model": self._model_status()}, qos=1, retain=True)
        log.info("model switched: %s %s -> %s %s", old.info.name, old.info.version, segmenter.info.name,
                 segmenter.info.version)

    def _report_update(self, event: dict) -> None:
        try:
            self._comms().publish("cmd/response", {"command": "model-update", "event": event}, qos=1)
        except Exception:
            log.exception("could not report the update progress")

    def _command_verifier(self) -> Callable[..., str | None] | None:
        from edge_agent.updates.signed_commands import command_verifier_for

        return command_verifier_for(self.cfg.updates, Path(self.cfg.state_dir))

    def _audit(self, record: dict) -> None:
        if self.updates is not None:
            self.updates.audit(record)
        else:
            log.info("command %s", json.dumps(record, default=str))

    # -- typed access to what the start steps built ----------------------------------------
    def _model_slot(self) -> ModelSlot:
        if self.model is None:
            raise AgentError("no model loaded yet")
        return self.model

    def _comms(self) -> Communicator:
        if self.comms is None:
            raise AgentError("the communicator is not started")
        return self.comms

    def _capture(self) -> FrameCapture:
        if self.capture is None:
            raise AgentError("the camera is not started")
        return self.capture

    def _position(self) -> PositionProvider:
        if self.position is None:
            raise AgentError("the position receiver is not started")
        return self.position
