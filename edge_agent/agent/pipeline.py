"""The frame pipeline: capture -> inference -> measurement -> outbox, as overlapping stages.

Threads, joined by bounded queues:
- capture (``video.FrameCapture``) decodes only the frames the coverage selector needs and
  keeps only the freshest when inference falls behind (dropped frames are counted there);
- ``InferenceStage`` segments frames with the active model: in its own thread with one
  worker, or spread over ``workers`` threads (each with its own runtime session) when the
  backend's own threads do not fill the cores; results leave in frame order either way;
- ``ReportStage`` measures cracks, attaches position and track ids, and hands the message
  to the communicator, whose outbox persists it before anything is sent. It overlaps with the
  inference of the next frames.
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
from typing import Any

import numpy as np

from edge_agent.agent.coverage import CoverageTracker
from edge_agent.agent.stats import PipelineStats
from edge_agent.detectors import Segmenter
from edge_agent.detectors.runtime import FrameError
from edge_agent.video.capture import FrameCapture
from edge_agent.video.frame import EndOfStream, Frame

log = logging.getLogger(__name__)

_END = object()


@dataclass
class Segmented:
    """One frame after inference, on its way to measurement and publishing."""

    frame: Frame
    prob: np.ndarray  # float32 0-1, or uint8 0-255 straight from a full-integer model
    mask: np.ndarray
    inference_ms: float
    model: dict  # ModelInfo.to_dict() of the model that produced it, with the threshold of this mask
    width_threshold: float | None = None  # the model's probability for measuring widths (None: the mask)


class ModelSlot:
    """The active segmenter, swappable while frames flow (model update); one copy per inference worker.

    Worker 0 uses the segmenter itself; other workers get clones (their own runtime sessions,
    created on first use) that are dropped when the model is swapped. The threshold is always
    read from the active segmenter, so ``set-threshold`` reaches every worker.
    """

    def __init__(self, segmenter: Segmenter) -> None:
        self._lock = threading.Lock()
        self._segmenter = segmenter
        self._clones: dict[int, Segmenter] = {}

    def get(self) -> Segmenter:
        with self._lock:
            return self._segmenter

    def for_worker(self, worker: int) -> tuple[Segmenter, Segmenter]:
        """(the active segmenter, the copy worker ``worker`` runs frames on)."""
        with self._lock:
            seg = self._segmenter
            if worker == 0:
                return seg, seg
            clone = self._clones.get(worker)
            if clone is None:
                clone = self._clones[worker] = seg.clone()
            return seg, clone

    def swap(self, segmenter: Segmenter) -> Segmenter:
        with self._lock:
            old, self._segmenter = self._segmenter, segmenter
            self._clones = {}
        return old


class _Failed:
    """A frame that produced no result (bad frame, failed inference): keeps the frame order going."""


_FAILED = _Failed()


class InferenceStage(threading.Thread):
    """Segments frames from the capture until it ends, ``max_frames`` is reached, or stop()."""

    def __init__(self, capture: FrameCapture, model: ModelSlot, out: queue.Queue, stats: PipelineStats,
                 on_frame_done: Callable[[], None], max_frames: int | None = None,
                 on_inference_failure: Callable[[Exception, int], None] | None = None,
                 paused: threading.Event | None = None, workers: int = 1,
                 coverage: CoverageTracker | None = None, footprint: Callable[[], float | None] | None = None):
        super().__init__(name="inference", daemon=True)
        self.capture, self.model, self.out, self.stats = capture, model, out, stats
        self.on_frame_done = on_frame_done
        self.on_inference_failure = on_inference_failure
        self.max_frames = max_frames
        self.paused = paused if paused is not None else threading.Event()  # set: frames are counted, not segmented
        self.workers = max(1, int(workers))
        self.coverage = coverage
        self.footprint = footprint or (lambda: None)
        self._stop_event = threading.Event()
        self.end: EndOfStream | None = None
        self._lock = threading.Lock()
        self._failed = 0

    def stop(self) -> None:
        self._stop_event.set()

    def _put(self, item: Any) -> bool:
        while True:
            try:
                self.out.put(item, timeout=0.5)
                return True
            except queue.Full:
                if self._stop_event.is_set() and item is not _END:
                    return False

    # -- one frame -------------------------------------------------------------------------
    def _segment(self, frame: Frame, worker: int) -> Segmented | _Failed:
        active, runner = self.model.for_worker(worker)
        try:
            threshold = active.threshold  # read once: the mask and the report must agree
            prob, mask = runner.probability_and_mask(frame.image, threshold)
        except FrameError as exc:
            self.stats.add("frame_errors")
            log.warning("frame %d skipped: %s", frame.index, exc)
            return self._count_failure()
        except Exception as exc:  # a failing model must not kill the agent
            n = self.stats.inference_failed()
            log.error("inference failed on frame %d (%d in a row): %s", frame.index, n, exc)
            if self.on_inference_failure:
                self.on_inference_failure(exc, n)
            return self._count_failure()
        ms = runner.last_inference_ms
        self.stats.inference_ok(ms)
        return Segmented(frame, prob, mask, ms, {**active.info.to_dict(), "threshold": threshold},
                         active.contract.width_threshold)

    def _count_failure(self) -> _Failed:
        with self._lock:
            self._failed += 1
        return _FAILED

    def _emit(self, result: Segmented | _Failed) -> bool:
        """Hand a result on, in frame order; False when stopping."""
        if isinstance(result, _Failed):
            return True
        if self.coverage is not None:
            self.coverage.processed(result.frame.odometer_m, self.footprint())
        self.on_frame_done()
        return self._put(result)

    def _next_frame(self) -> Frame | None:
        """The next frame to segment; None at the end (``self.end`` says why) or on stop."""
        while not self._stop_event.is_set():
            item = self.capture.get(timeout=0.5)
            if item is None:
                continue
            if isinstance(item, EndOfStream):
                self.end = item
                return None
            self.stats.frames_in.mark()
            if self.paused.is_set():
                self.stats.add("frames_paused")
                continue
            return item
        return None

    # -- loops -----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            if self.workers == 1:
                self._run_single()
            else:
                self._run_pool()
        finally:
            self._put(_END)

    def _run_single(self) -> None:
        processed = 0
        while self.max_frames is None or processed < self.max_frames:
            frame = self._next_frame()
            if frame is None:
                return
            result = self._segment(frame, 0)
            if isinstance(result, Segmented):
                processed += 1
            if not self._emit(result):
                return

    def _run_pool(self) -> None:
        """Dispatch frames to worker threads; a collector releases results in frame order."""
        work: queue.Queue = queue.Queue(maxsize=self.workers)
        results: dict[int, Segmented | _Failed] = {}
        ready = threading.Condition()

        def worker(number: int) -> None:
            while True:
                job = work.get()
                if job is None:
                    return
                seq, frame = job
                result = self._segment(frame, number)
                with ready:
                    results[seq] = result
                    ready.notify_all()

        threads = [threading.Thread(target=worker, args=(i,), name=f"inference-{i}", daemon=True)
                   for i in range(self.workers)]
        for t in threads:
            t.start()
        dispatched = 0
        emitted = 0
        stopping = False
        try:
            while True:
                with self._lock:
                    budget_left = self.max_frames is None or dispatched - self._failed < self.max_frames
                frame = self._next_frame() if budget_left and not stopping else None
                if frame is not None:
                    work.put((dispatched, frame))
                    dispatched += 1
                # release every finished result that is next in order
                with ready:
                    while emitted < dispatched and (frame is None or emitted in results):
                        while emitted not in results:
                            ready.wait(0.5)
                        result = results.pop(emitted)
                        emitted += 1
                        if not self._emit(result):
                            stopping = True
                if frame is None and emitted == dispatched:
                    return
        finally:
            for _ in threads:
                work.put(None)
            for t in threads:
                t.join(timeout=30)


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
            self.stats.measured((time.perf_counter() - t0) * 1000.0)
            self.stats.frames_out.mark()
