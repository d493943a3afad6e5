"""One health picture of the agent, in the two shapes its readers want.

``flat()`` is the ``HealthSnapshot`` dict the local HTTP endpoints and /metrics read;
``payload()`` is the nested message published on ``health`` over MQTT. Both come from the
same readings so the office and the vehicle never disagree.
"""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.agent.stats import PipelineStats
from edge_agent.comms.base import Communicator
from edge_agent.stats import system
from edge_agent.video.capture import FrameCapture


class HealthCollector:
    """Reads the pipeline counters, the camera, the broker link and the system at one moment."""

    def __init__(self, stats: PipelineStats, capture: FrameCapture, comms: Communicator, model_info: Callable[[], dict],
                 model_manifest: Callable[[], dict | None], queue_depth: Callable[[], int],
                 memory_limit_bytes: int | None = None, paused: Callable[[], bool] = lambda: False,
                 extra: Callable[[], dict] | None = None, coverage: Callable[[], float | None] | None = None):
        self.stats, self.capture, self.comms = stats, capture, comms
        self.model_info, self.model_manifest = model_info, model_manifest
        self.queue_depth, self.paused = queue_depth, paused
        self.memory_limit_bytes = memory_limit_bytes
        self.extra = extra
        self.coverage = coverage
        self.last_coverage: float | None = None
        system.process_cpu_percent()  # prime psutil's interval counter

    def flat(self) -> dict:
        s = self.stats.snapshot()
        cam = self.capture.stats()
        link = self.comms.stats()
        return {
            "heartbeat_age_s": s["heartbeat_age_s"],
            "model_loaded": True,
            "camera_last_frame_age_s": cam.last_frame_age_s,
            "camera_state": cam.state,
            "outbox_writable": link.outbox_writable,
            "frames_in": s["frames_in"],
            "frames_processed": s["frames_processed"],
            "frames_dropped": cam.frames_dropped,
            "fps": s["fps_out"],
            "inference_ms_p50": s["inference_ms_p50"],
            "inference_ms_p95": s["inference_ms_p95"],
            "inference_histogram": self.stats.inference_hist.snapshot(),
            "measure_histogram": self.stats.measure_hist.snapshot(),
            "outbox_depth": link.outbox_depth,
            "outbox_oldest_age_s": link.outbox_oldest_age_s,
            "mqtt_connected": link.connected,
            "mqtt_reconnects": link.reconnects,
            "cpu_percent": system.process_cpu_percent(),
            "rss_mb": round(system.process_rss_mb(), 1),
            "memory_limit_mb": round(self.memory_limit_bytes / 2**20, 1) if self.memory_limit_bytes else None,
            "temperature_c": system.temperature_c(),
            "uptime_s": s["uptime_s"],
            "model": self.model_info(),
            "model_manifest": self.model_manifest(),
        }

    def payload(self) -> dict:
        """The MQTT ``health`` message body."""
        s = self.stats.snapshot()
        cam = self.capture.stats()
        link = self.comms.stats()
        body = {
            "frames": {"in": s["frames_in"], "processed": s["frames_processed"], "fps_in": s["fps_in"],
                       "fps_out": s["fps_out"], "dropped": cam.frames_dropped, "skipped": cam.frames_skipped,
                       "skipped_coverage": cam.frames_skipped_coverage,
                       "paused": s["frames_paused"], "frame_errors": s["frame_errors"],
                       "inference_errors": s["inference_errors"], "report_errors": s["report_errors"]},
            "inference_ms": {"p50": s["inference_ms_p50"], "p95": s["inference_ms_p95"]},
            "measure_ms": {"p50": s["measure_ms_p50"], "p95": s["measure_ms_p95"]},
            "queue_depth": self.queue_depth(),
            "detections": {"messages": s["detection_messages"], "cracks": s["cracks_reported"],
                           "new_cracks": s["new_cracks"], "snapshots": s["snapshots"]},
            "camera": {"state": cam.state, "source": cam.source, "kind": cam.kind,
                       "last_frame_age_s": _round(cam.last_frame_age_s), "stalls": cam.stalls,
                       "reconnects": cam.reconnects, "corrupt_frames": cam.corrupt_frames,
                       "read_errors": cam.read_errors},
            "outbox": {"depth": link.outbox_depth, "bytes": link.outbox_bytes,
                       "oldest_age_s": _round(link.outbox_oldest_age_s), "dropped": link.dropped,
                       "corrupt": link.outbox_corrupt, "lost_files": link.outbox_lost_files,
                       "writable": link.outbox_writable},
            "link": {"state": link.link_state, "connected": link.connected, "reconnects": link.reconnects,
                     "published": link.published, "acked": link.acked},
            "system": {"cpu_percent": system.process_cpu_percent(), "system_cpu_percent": system.system_cpu_percent(),
                       "rss_mb": round(system.process_rss_mb(), 1), "temperature_c": system.temperature_c(),
                       "throttling": system.pi_throttling()},
            "model": self.model_info(),
            "paused": self.paused(),
            "coverage": self._take_coverage(),
            "uptime_s": s["uptime_s"],
        }
        if self.extra is not None:
            body.update(self.extra())
        return body

    def _take_coverage(self) -> float | None:
        """Coverage over the health interval that just ended (each call starts a new interval)."""
        self.last_coverage = self.coverage() if self.coverage is not None else None
        return self.last_coverage

    def status_line(self) -> str:
        """One line for systemd's STATUS= (``systemctl status`` shows it)."""
        s = self.stats.snapshot()
        link = self.comms.stats()
        cam = self.capture.stats()
        coverage = self.last_coverage
        covered = f", coverage {coverage:.0%}" if coverage is not None else ""
        return (f"{s['frames_processed']} frames ({s['fps_out']:.1f} fps{covered}), skipped "
                f"{cam.frames_skipped_coverage} on purpose, dropped {cam.frames_dropped}, inference p50 "
                f"{s['inference_ms_p50'] or 0:.0f} ms, camera {cam.state}, mqtt {link.link_state}, outbox "
                f"{link.outbox_depth}, {s['detection_messages']} detection msgs")


def _round(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)
