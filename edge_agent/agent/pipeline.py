"""The frame pipeline: capture -> inference -> measurement -> outbox, as overlapping stages.

Three threads, joined by bounded queues:
- capture (``video.FrameCapture``) keeps only the freshest frames when inference falls
  behind (dropped frames are counted there);
- ``InferenceStage`` segments frames with the active model;
- ``ReportStage`` measures cracks, attaches position and track ids, and hands the message
  to the communicator, whose outbox persists it before anything is sent.
Once a frame has been segmented nothing downstream drops it: the queue between inference
and reporting blocks instead.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.agent.stats import PipelineStats
from edge_agent.detectors.runtime import FrameError
from edge_agent.video.frame import EndOfStream, Frame

log = logging.getLogger(__name__)

_END = object()


@dataclass
class Segmented:
    """One frame after inference, on its way to measurement and publishing."""

    frame: Frame
    prob: np.ndarray
    mask: np.ndarray
    inference_ms: float
    model: dict  # ModelInfo.to_dict() of the model that produced it, with the threshold of this mask


class ModelSlot:
    """The active segmenter, swappable while frames flow (threshold change, model update)."""

    def __init__(self, segmenter) -> None:
        self._lock = threading.Lock()
        self._segmenter = segmenter

    def get(self):
        with self._lock:
            return self._segmenter

    def swap(self, segmenter):
        with self._lock:
            old, self._segmenter = self._segmenter, segmenter
        return old


class InferenceStage(threading.Thread):
    """Segments frames from the capture until it ends, ``max_frames`` is reached, or stop()."""

    def __init__(self, capture, model: ModelSlot, out: queue.Queue, stats: PipelineStats,
                 on_frame_done: Callable[[], None], max_frames: int | None = None,
                 on_inference_failure: Callable[[Exception, int], None] | None = None,
                 paused: threading.Event | None = None):
        super().__init__(name="inference", daemon=True)
        self.capture, self.model, self.out, self.stats = capture, model, out, stats
        self.on_frame_done = on_frame_done
        self.on_inference_failure = on_inference_failure
        self.max_frames = max_frames
        self.paused = paused if paused is not None else threading.Event()  # set: frames are counted, not segmented
        self._stop_event = threading.Event()
        self.end: EndOfStream | None = None

    def stop(self) -> None:
        self._stop_event.set()

    def _put(self, item) -> bool:
        while True:
            try:
                self.out.put(item, timeout=0.5)
                return True
            except queue.Full:
                if self._stop_event.is_set() and item is not _END:
                    return False

    def run(self) -> None:
        processed = 0
        try:
            while not self._stop_event.is_set():
                if self.max_frames is not None and processed >= self.max_frames:
                    break
                item = self.capture.get(timeout=0.5)
                if item is None:
                    continue
                if isinstance(item, EndOfStream):
                    self.end = item
                    break
                self.stats.frames_in.mark()
                if self.paused.is_set():
                    self.stats.add("frames_paused")
                    continue
                segmenter = self.model.get()
                try:
                    prob = segmenter.probabilities(item.image)
                except FrameError as exc:
                    self.stats.add("frame_errors")
                    log.warning("frame %d skipped: %s", item.index, exc)
                    continue
                except Exception as exc:  # a failing model must not kill the agent
                    n = self.stats.inference_failed()
                    log.error("inference failed on frame %d (%d in a row): %s", item.index, n, exc)
                    if self.on_inference_failure:
                        self.on_inference_failure(exc, n)
                    continue
                ms = segmenter.last_inference_ms
                self.stats.inference_ok(ms)
                threshold = segmenter.threshold  # read once: the mask and the report must agree
                mask = prob >= threshold
                processed += 1
                self.on_frame_done()
                model = {**segmenter.info.to_dict(), "threshold": threshold}
                if not self._put(Segmented(item, prob, mask, ms, model)):
                    break
        finally:
            self._put(_END)


class ReportStage(threading.Thread):
    """Measures, positions and publishes every segmented frame, in order."""

    def __init__(self, inbox: queue.Queue, handle: Callable[[Segmented], None], stats: PipelineStats):
        super().__init__(name="report", daemon=True)
        self.inbox, self.handle, self.stats = inbox, handle, stats

    def run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is _END:
                return
            t0 = time.perf_counter()
            try:
                self.handle(item)
            except Exception:  # one bad frame must not stop reporting of the next ones
                self.stats.add("report_errors")
                log.exception("reporting frame %d failed", item.frame.index)
            self.stats.measure_ms.add((time.perf_counter() - t0) * 1000.0)
            self.stats.frames_out.mark()
