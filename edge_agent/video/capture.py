"""The capture loop: a background thread that keeps the freshest frames flowing from a source, and keeps
trying when the source goes away.

Structure (two kinds of threads, on purpose):

* the **supervisor** thread owns the lifecycle: it starts a reader, watches it, and on a stall (no frame for
  ``stall_timeout_s``), a read error or a failed open it waits an exponentially growing, capped backoff and
  starts a new reader on a fresh session;
* a **reader** thread per session opens the source, grabs, paces, decimates, decodes, validates, and queues.

Limitation (why readers are separate): OpenCV's ``read``/``grab`` cannot be interrupted, and releasing a
``VideoCapture`` from another thread while it blocks is unsafe. A stalled reader is therefore abandoned,
not killed: it is flagged cancelled, its late frames are discarded, and it releases its session itself
when the blocking call finally returns. FFmpeg streams bound that with a read timeout, V4L2 with the
driver's 10 s select timeout; a GStreamer pipeline can block until it is torn down. Abandoned readers are
daemon threads and are counted in ``CaptureStats.abandoned_readers``. ``stop()`` never waits for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Literal

import numpy as np

from edge_agent.video.errors import EndOfSource, SourceReadError, VideoSourceError
from edge_agent.video.frame import MAX_FRAME_PIXELS, EndOfStream, EndReason, Frame, frame_problem
from edge_agent.video.framequeue import FrameQueue
from edge_agent.video.pacing import FrameRateLimiter, FrameSelectorLike
from edge_agent.video.sources import FrameSource, Grab, SourceSession

log = logging.getLogger(__name__)


class CaptureState(str, Enum):
    STARTING = "starting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"


@dataclass(frozen=True)
class CaptureStats:
    """A snapshot of the capture counters (all counts since start)."""

    source: str
    kind: str
    state: str
    frames_read: int  # grabbed from the source
    frames_captured: int  # handed to the queue
    frames_skipped: int  # not decoded, to hold the target frame rate
    frames_skipped_coverage: int  # not decoded: the road they show was already imaged (FrameSelector)
    frames_dropped: int  # oldest frames pushed out of a full queue (consumer too slow)
    corrupt_frames: int  # empty / undecodable / wrong-shape frames, skipped
    read_errors: int  # sessions that ended in a read failure
    open_failures: int  # open attempts that failed
    stalls: int  # sessions abandoned by the watchdog (no frame for stall_timeout_s)
    reconnects: int  # reopen attempts after a failure
    abandoned_readers: int  # readers still stuck in a blocking OpenCV call
    queue_depth: int
    last_frame_age_s: float | None  # since the last captured frame; None before the first
    last_error: str | None

    def as_dict(self) -> dict:
        return asdict(self)


class _Reader:
    """One session's thread. Written only by its own thread, except ``cancel`` (set by the supervisor)."""

    def __init__(self, capture: FrameCapture, number: int):
        self.capture = capture
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.opened = False
        self.good_frames = 0
        self.outcome: tuple[str, str | None] = ("cancelled", None)
        self.last_progress = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"capture-reader-{capture.source.kind}-{number}")

    def _run(self) -> None:
        cap = self.capture
        try:
            try:
                session = cap.source.open()
            except VideoSourceError as e:
                self.outcome = ("open_error", str(e))
                return
            except Exception as e:  # cv2.error and friends: treat like any failed open
                self.outcome = ("open_error", f"{cap.source.name}: opening failed: {e}")
                return
            try:
                if self.cancel.is_set():
                    return
                self.opened = True
                self.last_progress = time.monotonic()
                self._loop(session)
            except EndOfSource:
                self.outcome = ("end", None)
            except (SourceReadError, VideoSourceError) as e:  # e.g. a looped folder that vanished
                self.outcome = ("read_error", str(e))
            except Exception as e:
                log.exception("%s: reader failed", cap.source.name)
                self.outcome = ("read_error", f"{cap.source.name}: {type(e).__name__}: {e}")
            finally:
                try:
                    session.close()
                except Exception:
                    log.debug("%s: error while closing the session", cap.source.name, exc_info=True)
        finally:
            self.done.set()

    def _loop(self, session: SourceSession) -> None:
        cap = self.capture
        limiter = FrameRateLimiter(cap.fps)
        pace = cap.realtime and cap.source.timed
        anchor: tuple[float, float] | None = None
        while not self.cancel.is_set():
            grab = session.grab()
            if self.cancel.is_set():
                return
            arrival = time.monotonic()
            timeline = grab.media_time_s if grab.media_time_s is not None else arrival
            cap._count("_frames_read")
            for _ in range(grab.damaged_before):
                cap._corrupt("unreadable: damaged data in the file", grab)
            if not limiter.accept(timeline):
                cap._count("_frames_skipped")
                self.last_progress = arrival
                continue
            odometer = None
            if cap.selector is not None:
                keep, odometer = cap.selector.accept(timeline)
                if not keep:
                    cap._count("_frames_skipped_coverage")
                    self.last_progress = arrival
                    continue
            if pace and grab.media_time_s is not None:
                anchor = self._pace(grab.media_time_s, anchor)
                if self.cancel.is_set():
                    return
            wall, mono = time.time(), time.monotonic()
            image = session.retrieve()
            problem = frame_problem(image, cap.max_pixels)
            if problem is not None or image is None:
                cap._corrupt(problem or "no image", grab)
                continue
            self.last_progress = time.monotonic()
            self.good_frames += 1
            cap._emit(self, image, grab, wall, mono, odometer)

    def _pace(self, media_t: float, anchor: tuple[float, float] | None) -> tuple[float, float]:
        """Sleep until ``media_t`` is due on the wall clock; re-anchor after falling >1 s behind (a blocked
        consumer) instead of bursting to catch up."""
        now = time.monotonic()
        if anchor is None or now - (anchor[1] + media_t - anchor[0]) > 1.0 or media_t < anchor[0]:
            return (media_t, now)
        target = anchor[1] + media_t - anchor[0]
        while (remaining := target - time.monotonic()) > 0:
            self.last_progress = time.monotonic()
            if self.cancel.wait(min(remaining, 0.1)):
                break
        return anchor


class FrameCapture:
    """Reads ``source`` on a background thread into a bounded queue; see the module docstring.

    Consume with ``get(timeout)`` or ``for frame in capture:``; the stream finishes with an
    ``EndOfStream`` marker (source ended, failed for good, or ``stop()``).
    """

    def __init__(self, source: FrameSource, *, fps: float | None = None, realtime: bool = True,
                 queue_size: int = 4, queue_policy: Literal["drop_oldest", "block"] = "drop_oldest",
                 stall_timeout_s: float = 5.0, open_timeout_s: float = 10.0, backoff_min_s: float = 0.5,
                 backoff_max_s: float = 30.0, max_reconnect_attempts: int | None = None,
                 selector: FrameSelectorLike | None = None, max_pixels: int = MAX_FRAME_PIXELS):
        self.source = source
        self.selector = selector
        self.max_pixels = max_pixels
        self._frame_shape: tuple[int, int] | None = None
        self.fps, self.realtime = fps, realtime
        self.stall_timeout_s, self.open_timeout_s = stall_timeout_s, open_timeout_s
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.max_reconnect_attempts = max_reconnect_attempts
        self._queue: FrameQueue[Frame | EndOfStream] = FrameQueue(queue_size, queue_policy)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: _Reader | None = None
        self._abandoned: list[_Reader] = []
        self._state = CaptureState.STARTING
        self._final: EndOfStream | None = None
        self._final_taken = False
        self._next_index = 0
        self._last_frame_mono: float | None = None
        self._last_error: str | None = None
        self._frames_read = self._frames_captured = self._frames_skipped = self._frames_dropped = 0
        self._frames_skipped_coverage = 0
        self._corrupt_frames = self._read_errors = self._open_failures = self._stalls = self._reconnects = 0

    # -- consumer side ---------------------------------------------------------------------------------

    def start(self) -> FrameCapture:
        """Check the source (raises VideoSourceError with a clear message) and start capturing."""
        if self._thread is not None:
            raise RuntimeError("this capture was already started; create a new FrameCapture")
        try:
            self.source.check()
        except VideoSourceError as e:
            with self._lock:
                self._state, self._last_error = CaptureState.FAILED, str(e)
            raise
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name=f"capture-{self.source.kind}")
        self._thread.start()
        return self

    def get(self, timeout: float | None = None) -> Frame | EndOfStream | None:
        """The next frame, the EndOfStream marker (again on every later call), or None after ``timeout``."""
        if self._final_taken:
            return self._final
        item = self._queue.get(timeout)
        if isinstance(item, EndOfStream):
            self._final_taken = True
        return item

    def frames(self, timeout: float | None = None) -> Iterator[Frame]:
        """Frames until the end of the stream; with ``timeout``, also stops after that long without one."""
        while True:
            item = self.get(timeout)
            if item is None or isinstance(item, EndOfStream):
                return
            yield item

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop capturing and queue the end marker; returns within about ``timeout`` even when a reader is
        stuck in a blocking read (it is abandoned, see the module docstring)."""
        self._stop.set()
        reader = self._reader
        if reader is not None:
            reader.cancel.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s: capture thread did not stop within %.1f s", self.source.name, timeout)
        self._finish("stopped")

    def __enter__(self) -> FrameCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def state(self) -> CaptureState:
        return self._state

    @property
    def end(self) -> EndOfStream | None:
        """The end marker once the stream has finished, else None."""
        return self._final

    def stats(self) -> CaptureStats:
        with self._lock:
            self._abandoned = [r for r in self._abandoned if r.thread.is_alive()]
            age = None if self._last_frame_mono is None else time.monotonic() - self._last_frame_mono
            return CaptureStats(
                source=self.source.name, kind=self.source.kind, state=self._state.value,
                frames_read=self._frames_read, frames_captured=self._frames_captured,
                frames_skipped=self._frames_skipped, frames_skipped_coverage=self._frames_skipped_coverage,
                frames_dropped=self._frames_dropped,
                corrupt_frames=self._corrupt_frames, read_errors=self._read_errors,
                open_failures=self._open_failures, stalls=self._stalls, reconnects=self._reconnects,
                abandoned_readers=len(self._abandoned), queue_depth=len(self._queue),
                last_frame_age_s=age, last_error=self._last_error)

    # -- supervisor ------------------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        return min(self.backoff_max_s, self.backoff_min_s * 2 ** max(0, failures - 1))

    def _supervise(self) -> None:
        failures = 0
        number = 0
        while not self._stop.is_set():
            if number > 0:
                if self.max_reconnect_attempts is not None and failures > self.max_reconnect_attempts:
                    log.error("%s: giving up after %d failed attempts: %s", self.source.name, failures,
                              self._last_error)
                    self._finish("failed", self._last_error)
                    return
                delay = self._backoff(failures)
                self._set_state(CaptureState.RECONNECTING)
                log.warning("%s: reopening in %.1f s (%s)", self.source.name, delay, self._last_error)
                if self._stop.wait(delay):
                    break
                self._count("_reconnects")
            number += 1
            reader = _Reader(self, number)
            self._reader = reader
            reader.thread.start()
            outcome = self._watch(reader)
            if outcome == "stopped":
                break
            if outcome == "end":
                self._finish("ended")
                return
            failures = 1 if reader.good_frames else failures + 1
        self._finish("stopped")

    def _watch(self, reader: _Reader) -> str:
        """Wait for the reader to finish or stall; count what happened; return the outcome."""
        poll = min(0.1, self.stall_timeout_s / 5)
        while not reader.done.wait(poll):
            if self._stop.is_set():
                self._abandon(reader, wait_s=0.5)
                return "stopped"
            limit = self.stall_timeout_s if reader.opened else self.open_timeout_s + self.stall_timeout_s
            idle = time.monotonic() - reader.last_progress
            if idle > limit:
                what = "no frame" if reader.opened else "opening did not finish"
                log.warning("%s: stalled (%s for %.1f s); abandoning the reader", self.source.name, what, idle)
                self._abandon(reader, wait_s=0.05)
                with self._lock:  # counted after the abandon so stats never show a stall without it
                    self._stalls += 1
                    self._last_error = f"{self.source.name}: {what} for {idle:.1f} s"
                self._set_state(CaptureState.STALLED)
                return "stall"
        kind, message = reader.outcome
        if self._stop.is_set() and kind not in ("end",):
            return "stopped"
        with self._lock:
            if kind == "open_error":
                self._open_failures += 1
            elif kind == "read_error":
                self._read_errors += 1
            if message:
                self._last_error = message
        return kind  # logged by the supervisor with the reopen delay

    def _abandon(self, reader: _Reader, wait_s: float) -> None:
        reader.cancel.set()
        reader.thread.join(wait_s)
        if reader.thread.is_alive():
            with self._lock:
                self._abandoned.append(reader)

    def _finish(self, reason: EndReason, error: str | None = None) -> None:
        with self._lock:
            if self._final is not None:
                return
            self._final = EndOfStream(reason, error)
            new_state = CaptureState.FAILED if reason == "failed" else CaptureState.ENDED
            self._queue.put_final(self._final)
        self._set_state(new_state)

    def _set_state(self, state: CaptureState) -> None:
        with self._lock:
            old, self._state = self._state, state
        if old != state:
            log.info("%s: %s -> %s", self.source.name, old.value, state.value)

    # -- reader callbacks --------------------------------------------------------------------------------

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def _corrupt(self, problem: str, grab: Grab) -> None:
        with self._lock:
            self._corrupt_frames += 1
            n = self._corrupt_frames
        if n in (1, 10, 100, 1000) or n % 10000 == 0:
            where = grab.path or (f"frame {grab.position_index}" if grab.position_index is not None else "frame")
            log.warning("%s: skipped a corrupt %s (%s); %d so far", self.source.name, where, problem, n)

    def _emit(self, reader: _Reader, image: np.ndarray, grab: Grab, wall: float, mono: float,
              odometer: float | None = None) -> None:
        if self.selector is not None and image.shape[:2] != self._frame_shape:
            self._frame_shape = (int(image.shape[0]), int(image.shape[1]))
            self.selector.set_frame_shape(self._frame_shape)
        with self._lock:
            if reader.cancel.is_set() or self._final is not None:
                return
            frame = Frame(image=image, index=self._next_index, capture_ts=wall, monotonic_ts=mono,
                          source=self.source.name, position_s=grab.position_s,
                          position_index=grab.position_index, path=grab.path, loop=grab.loop,
                          odometer_m=odometer)
            self._next_index += 1
            self._last_frame_mono = mono
            became_streaming = self._state != CaptureState.STREAMING
            self._state = CaptureState.STREAMING
            if self._queue.policy == "drop_oldest":
                _, dropped = self._queue.put(frame)
                self._frames_captured += 1
                self._frames_dropped += dropped
        if became_streaming:
            log.info("%s: streaming (frame %d)", self.source.name, frame.index)
        if self._queue.policy != "drop_oldest":
            def waiting() -> None:
                reader.last_progress = time.monotonic()
            queued, _ = self._queue.put(frame, cancelled=reader.cancel.is_set, on_wait=waiting)
            if queued:
                self._count("_frames_captured")
