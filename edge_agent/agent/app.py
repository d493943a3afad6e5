"""The edge agent: wires camera, model, measurement, position, MQTT, service and commands.

Lifecycle: ``start()`` loads the model (failing fast with a clear error), opens the
camera, connects to the broker in the background (detections queue in the outbox until it
is up), and starts the pipeline threads; ``wait()`` returns when the source ends,
``max_frames`` is reached or a signal arrives; ``shutdown()`` stops capture, lets every
segmented frame be reported, flushes the outbox (what the broker has not acknowledged
stays on disk for the next start) and says ``stopped``.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from pathlib import Path

from edge_agent.agent.commands import (
    Command,
    CommandError,
    CommandRegistry,
    require_number,
)
from edge_agent.agent.health import HealthCollector
from edge_agent.agent.pipeline import InferenceStage, ModelSlot, ReportStage
from edge_agent.agent.reporter import Reporter
from edge_agent.agent.stats import PipelineStats
from edge_agent.comms.mqtt import MqttCommunicator
from edge_agent.config.agent import AgentConfig
from edge_agent.config.loader import ConfigError, load_config
from edge_agent.detectors import ModelError, open_model
from edge_agent.errors import UserError
from edge_agent.position import create_position_provider
from edge_agent.service.notify import Notifier
from edge_agent.service.watchdog import FrameWatchdog
from edge_agent.stats import system
from edge_agent.video.capture import FrameCapture
from edge_agent.video.factory import capture_from_config, parse_source

log = logging.getLogger(__name__)

def _process_start() -> float:
    """When this process started (cold-start figures count from exec, not from import)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return time.time()


PROCESS_START = _process_start()


class AgentError(UserError):
    """The agent cannot start or run as configured; the message says what to fix."""


def prepare_camera_config(cfg: AgentConfig) -> AgentConfig:
    """Files and folders are processed losslessly unless the config chose otherwise.

    A live camera must drop stale frames when inference falls behind; a recorded survey
    clip must not lose any, so its queue blocks instead (when ``queue_policy`` is unset).
    """
    cam = cfg.camera
    if "queue_policy" in cam.model_fields_set:
        return cfg
    try:
        kind = parse_source(cam.source, cam.kind).kind
    except Exception:
        return cfg  # start() reports the source problem with its own message
    if kind in ("file", "folder"):
        return cfg.model_copy(update={"camera": cam.model_copy(update={"queue_policy": "block"})})
    return cfg


class Agent:
    def __init__(self, cfg: AgentConfig, config_path: str | Path | None = None, max_frames: int | None = None,
                 overrides: dict | None = None, flush_timeout_s: float = 30.0):
        self.cfg = prepare_camera_config(cfg)
        self.config_path = Path(config_path) if config_path else None
        self.overrides = overrides or {}
        self.max_frames = max_frames
        self.flush_timeout_s = flush_timeout_s
        self.stats = PipelineStats()
        self.notifier = Notifier()
        self.watchdog = FrameWatchdog(self.notifier)
        self._stop = threading.Event()
        self._ready_sent = False
        self._threads: list[threading.Thread] = []
        self.http = None
        self.capture: FrameCapture | None = None
        self.comms: MqttCommunicator | None = None
        self.position = None
        self.summary: dict = {}
        self._memory_paused = False
        self.updates = None  # UpdateManager when over-the-air updates are configured

    # -- model -----------------------------------------------------------------------------
    def load_model(self, path: Path | None):
        m = self.cfg.model
        public_key = None
        if m.public_key_file or m.public_key_credential:
            from edge_agent.config import model_public_key

            public_key = model_public_key(m)
        segmenter = open_model(path, backend=m.backend, threads=m.threads, providers=m.onnx_providers(),
                               public_key=public_key, require_signature=m.require_signature,
                               precision=m.precision, threshold=m.threshold)
        return segmenter

    def _startup_model_path(self) -> Path | None:
        if self.updates is not None:
            installed = self.updates.resolve_startup_model()
            if installed is not None:
                return installed
        return self.cfg.model.path

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self._close_partial()
            raise

    def _close_partial(self) -> None:
        """Release what a failed start() had opened (camera, broker link, position, HTTP)."""
        for closer in (lambda: self.capture.stop(0.5), lambda: self.comms.stop(flush_timeout=0.0),
                       lambda: self.position.stop(), lambda: self.http.stop()):
            try:
                closer()
            except Exception:
                pass

    def _start(self) -> None:
        cfg = self.cfg
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        self._setup_updates()
        segmenter = self.load_model(self._startup_model_path())
        if cfg.model.expected_version and segmenter.info.version != cfg.model.expected_version:
            raise AgentError(f"model version {segmenter.info.version} is not the expected "
                             f"{cfg.model.expected_version} (model.expected_version / MODEL_VERSION)")
        self.model = ModelSlot(segmenter)
        log.info("model %s %s on %s (%s), %s", segmenter.info.name, segmenter.info.version, segmenter.backend_name,
                 segmenter.info.precision, segmenter.info.strategy)
        self.capture = capture_from_config(cfg.camera)
        self.capture.start()
        self.comms = MqttCommunicator(cfg.mqtt, cfg.device_id, state_dir=cfg.state_dir,
                                      status={"model": self._model_status()})
        self.position = create_position_provider(cfg.position)
        self.position.start()
        run_id = f"{cfg.device_id}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(PROCESS_START))}"
        self.reporter = Reporter(self.comms, self.position, cfg.measurement, cfg.reporting, self.stats, run_id)
        self.registry = CommandRegistry(verify=self._command_verifier(), audit=self._audit)
        self._register_commands()
        self.comms.subscribe_commands(self.registry)
        self.comms.start()
        self.segmented: queue.Queue = queue.Queue(maxsize=8)
        self.inference = InferenceStage(self.capture, self.model, self.segmented, self.stats,
                                        on_frame_done=self._frame_done, max_frames=self.max_frames,
                                        on_inference_failure=self._inference_failed)
        self.report = ReportStage(self.segmented, self.reporter, self.stats)
        limit = cfg.health.memory_limit
        self.health = HealthCollector(self.stats, self.capture, self.comms, self._model_info, self._model_manifest,
                                      self.segmented.qsize, limit, paused=self.inference.paused.is_set,
                                      extra=self._health_extra)
        if cfg.http.enabled:
            from edge_agent.service.http import (
                HealthServer,  # prometheus-client only when served
            )

            self.http = HealthServer(cfg, self.health.flat)
            self.http.start()
        self.report.start()
        self.inference.start()
        self._threads = [threading.Thread(target=self._health_loop, name="health", daemon=True)]
        for t in self._threads:
            t.start()

    def _frame_done(self) -> None:
        self.watchdog.heartbeat()
        if not self._ready_sent:
            self._ready_sent = True
            self.stats.first_frame_s = time.time() - PROCESS_START
            self.notifier.ready(status=f"first frame processed; model {self._model_info()['name']}")
            self.watchdog.start()

    def wait(self) -> None:
        while not self._stop.is_set() and self.inference.is_alive():
            self.inference.join(timeout=0.5)

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def shutdown(self) -> dict:
        self.notifier.stopping("stopping: flushing detections")
        self.inference.stop()
        if self.capture is not None:
            self.capture.stop()
        self.inference.join(timeout=10)
        self.report.join(timeout=30)
        self.watchdog.stop()
        self._stop.set()
        delivered = self.comms.flush(self.flush_timeout_s) if self.comms else True
        link = self.comms.stats()
        cam = self.capture.stats()
        s = self.stats.snapshot()
        self.summary = {
            "frames": s["frames_processed"], "frames_in": s["frames_in"],
            "detection_messages": s["detection_messages"], "detections_published": link.acked,
            "pending": link.outbox_depth, "dropped": cam.frames_dropped + link.dropped,
            "frames_dropped": cam.frames_dropped, "outbox_dropped": link.dropped,
            "frame_errors": s["frame_errors"], "inference_errors": s["inference_errors"],
            "cracks": s["cracks_reported"], "new_cracks": s["new_cracks"],
            "fps_in": s["fps_in"], "fps_out": s["fps_out"], "inference_ms_p50": s["inference_ms_p50"],
            "inference_ms_p95": s["inference_ms_p95"], "measure_ms_p50": s["measure_ms_p50"],
            "first_frame_s": None if self.stats.first_frame_s is None else round(self.stats.first_frame_s, 3),
            "elapsed_s": round(time.time() - PROCESS_START, 2), "rss_mb": round(system.process_rss_mb(), 1),
            "delivered": delivered, "source_end": self.inference.end.reason if self.inference.end else None,
            "model": self._model_info(),
        }
        self.comms.stop(flush_timeout=0.5)
        self.position.stop()
        if self.http is not None:
            self.http.stop()
        if self.updates is not None:
            self.updates.close()
        self.notifier.close()
        return self.summary

    # -- periodic --------------------------------------------------------------------------
    def _health_loop(self) -> None:
        next_health = time.monotonic() + min(5.0, self.cfg.health.interval_s)
        while not self._stop.wait(1.0):
            self._check_memory()
            if self.updates is not None:
                self._observe_update()
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + self.cfg.health.interval_s
                try:
                    self.comms.publish_health(self.health.payload())
                    self.notifier.status(self.health.status_line())
                except Exception:
                    log.exception("health report failed")

    def _check_memory(self) -> None:
        limit = self.cfg.health.memory_limit
        if not limit:
            return
        rss = system.process_rss_mb() * 2**20
        if rss > limit and not self._memory_paused:
            self._memory_paused = True
            self.inference.paused.set()
            log.warning("RSS %.0f MB is above the memory limit %.0f MB: not accepting frames until it drops",
                        rss / 2**20, limit / 2**20)
        elif self._memory_paused and rss < 0.9 * limit:
            self._memory_paused = False
            self.inference.paused.clear()
            log.warning("RSS back under the memory limit: accepting frames again")

    # -- model info ------------------------------------------------------------------------
    def _model_info(self) -> dict:
        seg = self.model.get()
        return {**seg.info.to_dict(), "threshold": seg.threshold}

    def _model_manifest(self) -> dict | None:
        return self.model.get().info.manifest

    def _model_status(self) -> dict:
        info = self._model_info()
        return {k: info[k] for k in ("name", "version", "backend", "precision")}

    def _health_extra(self) -> dict:
        if self.updates is None:
            return {}
        return {"update": self.updates.status()}

    def _inference_failed(self, exc: Exception, consecutive: int) -> None:
        if self.updates is not None:
            self.updates.on_inference_error(consecutive)

    # -- commands --------------------------------------------------------------------------
    def _register_commands(self) -> None:
        r = self.registry
        r.register("ping", lambda cmd: {"pong": True, "uptime_s": self.stats.snapshot()["uptime_s"]})
        r.register("status", lambda cmd: self.health.payload())
        r.register("pause", self._cmd_pause)
        r.register("resume", self._cmd_resume)
        r.register("snapshot", self._cmd_snapshot)
        r.register("set-threshold", self._cmd_set_threshold)
        r.register("reload-config", self._cmd_reload_config)
        if self.updates is not None:
            self.updates.register_commands(r)

    def _cmd_pause(self, cmd: Command) -> dict:
        self.inference.paused.set()
        return {"paused": True}

    def _cmd_resume(self, cmd: Command) -> dict:
        if self._memory_paused:
            raise CommandError("paused because memory is above health.memory_limit; it resumes by itself")
        self.inference.paused.clear()
        return {"paused": False}

    def _cmd_snapshot(self, cmd: Command) -> dict:
        self.reporter.request_snapshot()
        return {"snapshot": "requested: published with the next processed frame"}

    def _cmd_set_threshold(self, cmd: Command) -> dict:
        value = require_number(cmd, "value", 0.0, 1.0) if "value" in cmd.args else require_number(
            cmd, "threshold", 0.0, 1.0)
        seg = self.model.get()
        old, seg.threshold = seg.threshold, value
        log.info("threshold changed by command: %.3f -> %.3f", old, value)
        return {"threshold": value, "previous": old}

    def _cmd_reload_config(self, cmd: Command) -> dict:
        if self.config_path is None:
            raise CommandError("the agent was started without --config: nothing to reload")
        try:
            new = prepare_camera_config(load_config(self.config_path, self.overrides))
        except ConfigError as exc:
            raise CommandError(f"config not reloaded, the running one stays: {exc}") from None
        applied, restart = [], []
        for section in ("measurement", "reporting"):
            if getattr(new, section) != getattr(self.cfg, section):
                applied.append(section)
        self.reporter.configure(new.measurement, new.reporting)
        if new.model.threshold != self.cfg.model.threshold:
            seg = self.model.get()
            seg.threshold = new.model.threshold or seg.contract.threshold
            applied.append("model.threshold")
        if new.health != self.cfg.health:
            applied.append("health")
        for section in ("camera", "mqtt", "position", "http", "state_dir", "device_id"):
            if getattr(new, section) != getattr(self.cfg, section):
                restart.append(section)
        old_model = self.cfg.model.model_copy(update={"threshold": None})
        if new.model.model_copy(update={"threshold": None}) != old_model:
            restart.append("model")
        self.cfg = self.cfg.model_copy(update={"measurement": new.measurement, "reporting": new.reporting,
                                               "health": new.health,
                                               "model": self.cfg.model.model_copy(
                                                   update={"threshold": new.model.threshold})})
        return {"applied": applied, "restart_required": restart}

    # -- over-the-air updates (edge_agent.updates) ------------------------------------------
    def _setup_updates(self) -> None:
        updates_cfg = getattr(self.cfg, "updates", None)
        if updates_cfg is None or not updates_cfg.enabled:
            return
        from edge_agent.updates.manager import UpdateManager

        self.updates = UpdateManager(self.cfg, load_model=self.load_model, swap_model=self._swap_model,
                                     report=self._report_update)

    def _swap_model(self, segmenter) -> None:
        old = self.model.swap(segmenter)
        self.comms.set_status(model=self._model_status())
        self.comms.publish("status", {"state": "online", "model": self._model_status()}, qos=1, retain=True)
        log.info("model switched: %s %s -> %s %s", old.info.name, old.info.version, segmenter.info.name,
                 segmenter.info.version)

    def _report_update(self, event: dict) -> None:
        try:
            self.comms.publish("cmd/response", {"command": "model-update", "event": event}, qos=1)
        except Exception:
            log.exception("could not report the update progress")

    def _observe_update(self) -> None:
        try:
            self.updates.observe(self.stats.snapshot())
        except Exception:
            log.exception("update watch failed")

    def _command_verifier(self):
        updates_cfg = getattr(self.cfg, "updates", None)
        if updates_cfg is None or not getattr(updates_cfg, "require_signed_commands", False):
            return None
        from edge_agent.updates.signed_commands import make_command_verifier

        return make_command_verifier(updates_cfg, Path(self.cfg.state_dir))

    def _audit(self, record: dict) -> None:
        if self.updates is not None:
            self.updates.audit(record)
        else:
            log.info("command %s", json.dumps(record, default=str))


def cli_overrides(args) -> dict:
    """The flags of ``crackseg-edge run`` as config overrides (unset flags are None, ignored)."""
    return {
        "camera.source": args.source, "mqtt.url": args.mqtt_url, "device_id": args.device_id,
        "state_dir": args.state_dir, "model.path": args.model, "model.backend": args.backend,
        "logging.level": getattr(args, "log_level", None),
    }


def run_from_cli(args) -> int:
    """``crackseg-edge run``: the last stdout line is a JSON summary when ``--max-frames`` is given."""
    overrides = {k: v for k, v in cli_overrides(args).items() if v is not None}
    cfg = load_config(args.config, overrides)
    logging.getLogger().setLevel(getattr(logging, cfg.logging.level))
    agent = Agent(cfg, config_path=args.config, max_frames=args.max_frames, overrides=overrides)
    previous = {sig: signal.signal(sig, agent.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            agent.start()
        except (ModelError, AgentError) as exc:
            raise AgentError(str(exc)) from None
        agent.wait()
        summary = agent.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(json.dumps(summary), flush=True)
    return 0
