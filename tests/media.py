"""Test media: the generated survey media (re-exported from ``edge_agent.video.synthetic``, which the
demo and benchmarks use too), corrupt files, and a loopback HTTP MJPEG camera that can be stalled, killed
and restarted.

Everything is deterministic by seed and small, so tests stay fast and need no files from outside.
Sizes are ``(width, height)`` like OpenCV's; ``make_pavement`` takes ``h, w`` like numpy.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from edge_agent.demo.broker import PortReservation
from edge_agent.video.synthetic import (
    VIDEO_CODECS,
    _size,
    make_pavement,
    survey_frames,
    write_image_folder,
    write_survey_video,
)

__all__ = ["VIDEO_CODECS", "MjpegServer", "make_pavement", "survey_frames", "write_garbage", "write_image_folder",
           "write_survey_video"]


def write_garbage(path: str | Path, n_bytes: int = 2048, seed: int = 0) -> Path:
    """A file of random bytes (e.g. named .jpg: a corrupt image)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    return path


class MjpegServer:
    """An HTTP MJPEG camera on 127.0.0.1 (multipart/x-mixed-replace, like most IP cameras' /video.mjpg).

    ``stall()`` keeps connections open but stops sending (a frozen camera: reads block), ``resume()``
    undoes it; ``stop()`` closes the port and all connections (camera off: connections are refused, and
    the port stays reserved for it); ``start()`` brings it back on the same port. Frames are a scrolling
    survey; the frame counter is drawn into the top-left corner.
    """

    def __init__(self, size: int | tuple[int, int] = (160, 120), fps: float = 25.0, seed: int = 0, port: int = 0):
        self.size, self.fps = _size(size), fps
        self.port = port
        self.frames_sent = 0  # frames sent or being sent, over all connections
        self.connections = 0
        self._lock = threading.Lock()
        self._stalled = threading.Event()
        self._closed = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._reservation: PortReservation | None = None
        self._frames = [f.copy() for f, _ in survey_frames(50, size, seed)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                owner.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not owner._closed.is_set():
                        with owner._lock:  # stall() returns only once no further frame can start
                            number = None if owner._stalled.is_set() else owner.frames_sent
                            if number is not None:
                                owner.frames_sent += 1
                        if number is None:
                            time.sleep(0.02)
                            continue
                        img = owner._frames[i % len(owner._frames)].copy()
                        cv2.putText(img, str(number), (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
                        jpg = cv2.imencode(".jpg", img)[1].tobytes()
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpg) + jpg + b"\r\n")
                        i += 1
                        time.sleep(1.0 / owner.fps)
                except OSError:
                    pass  # client went away

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def start(self) -> MjpegServer:
        self._closed.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())  # binds over the reservation
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stall(self) -> None:
        """From now on no frame is sent: ``frames_sent`` (sent or being sent) is final when this returns."""
        with self._lock:
            self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def stop(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._reservation = PortReservation(port=self.port)

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
