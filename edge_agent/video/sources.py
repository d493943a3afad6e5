"""Frame sources: one class per kind (V4L2 camera, GStreamer pipeline, network stream, video file, image
folder).

A ``FrameSource`` is only a description; ``open()`` returns a fresh ``SourceSession`` (one live
connection). The split exists for the stall watchdog: a session stuck inside a blocking OpenCV call cannot
be interrupted or safely released from another thread, so the capture loop abandons it and opens a new
session from the same source while the old one finishes (and releases itself) whenever the call returns.

Sessions split reading into ``grab()`` (fetch, cheap) and ``retrieve()`` (decode): frames the target frame
rate skips are never decoded, which matters on a Raspberry Pi decoding MJPEG at 30 fps.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from edge_agent.imageio import DEFAULT_MAX_PIXELS, ImageReadError, check_pixels, list_images, read_image
from edge_agent.util.urls import redact_url
from edge_agent.video.errors import (
    EndOfSource,
    SourceNotFoundError,
    SourceOpenError,
    SourceReadError,
    SourceSpecError,
    VideoBackendUnavailableError,
)

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp", "srt")
#: Low-latency FFmpeg demuxer options: no input buffering, and RTSP over TCP (UDP loses packets on LTE
#: links and shows up as smeared frames).
DEFAULT_FFMPEG_OPTIONS = "fflags;nobuffer|flags;low_delay"
DEFAULT_RTSP_FFMPEG_OPTIONS = "rtsp_transport;tcp|" + DEFAULT_FFMPEG_OPTIONS
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"

# OpenCV reads OPENCV_FFMPEG_CAPTURE_OPTIONS from the process environment at open time; opens that set it
# are serialized so two sources never see each other's options.
_FFMPEG_OPEN_LOCK = threading.Lock()

_GST_NO_BACKEND = ("this OpenCV ({version}) was built without GStreamer, which source {name!r} needs; "
                   "the opencv-python(-headless) wheels from PyPI never include it: on Jetson / Raspberry Pi "
                   "install the distro build (sudo apt install python3-opencv), create the venv with "
                   "--system-site-packages and pip uninstall opencv-python-headless from it, or use a "
                   "V4L2 camera (/dev/videoN) or stream URL instead")


def backend_available(api: int) -> bool:
    """True when this OpenCV build can use video backend ``api`` (cv2.CAP_V4L2, CAP_GSTREAMER, ...)."""
    registry = getattr(cv2, "videoio_registry", None)
    if registry is not None and hasattr(registry, "hasBackend"):
        return bool(registry.hasBackend(api))
    # Older builds: read the "Video I/O" section of the build report.
    label = {cv2.CAP_V4L2: "v4l/v4l2", cv2.CAP_GSTREAMER: "GStreamer", cv2.CAP_FFMPEG: "FFMPEG"}.get(api)
    if label is None:
        return False
    m = re.search(rf"^\s*{re.escape(label)}:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(m and m.group(1).upper() == "YES")


@dataclass(frozen=True, slots=True)
class Grab:
    """What a session knows about a frame before decoding it.

    ``media_time_s`` is the session's own timeline (file time, increasing across loops) used for realtime
    pacing and frame-rate decimation; None for live sources, which use the arrival time instead.
    """

    media_time_s: float | None = None
    position_s: float | None = None
    position_index: int | None = None
    path: str | None = None
    loop: int = 0
    damaged_before: int = 0  # unreadable frames of a recording skipped just before this one (damaged data)


class SourceSession(ABC):
    """One open connection to a source; used by one reader thread only."""

    @abstractmethod
    def grab(self) -> Grab:
        """Wait for the next frame. Raises EndOfSource at the end of a finite source, SourceReadError when
        the source failed (the capture loop then reconnects)."""

    @abstractmethod
    def retrieve(self) -> np.ndarray | None:
        """Decode the grabbed frame; None when it is corrupt or unreadable."""

    @abstractmethod
    def close(self) -> None:
        """Release the device / connection / file."""


class FrameSource(ABC):
    """Where frames come from; ``open()`` may be called again after a failure."""

    kind: str = ""
    #: ends by itself (a non-looped file or folder)
    finite: bool = False
    #: has its own timeline (files, folders with a rate): paced and decimated on media time
    timed: bool = False

    def __init__(self, name: str):
        self.name = name

    @abstractmethod
    def check(self) -> None:
        """Cheap up-front checks (backend compiled in, device/file exists); raises VideoSourceError with a
        message that says what to fix. Run before the capture thread starts."""

    @abstractmethod
    def open(self) -> SourceSession:
        """Open a new session; raises SourceOpenError when that fails now (the capture loop retries)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class _CvSession(SourceSession):
    """A live cv2.VideoCapture: a failed grab is a read error, never an end."""

    def __init__(self, cap: cv2.VideoCapture, name: str):
        self._cap = cap
        self._name = name

    def grab(self) -> Grab:
        if not self._cap.grab():
            raise SourceReadError(f"{self._name}: reading a frame failed (disconnected or timed out)")
        return Grab()

    def retrieve(self) -> np.ndarray | None:
        ok, image = self._cap.retrieve()
        return image if ok else None

    def close(self) -> None:
        self._cap.release()


def _require_backend(api: int, name: str, what: str) -> None:
    if not backend_available(api):
        if api == cv2.CAP_GSTREAMER:
            raise VideoBackendUnavailableError(_GST_NO_BACKEND.format(version=cv2.__version__, name=name))
        raise VideoBackendUnavailableError(f"this OpenCV ({cv2.__version__}) has no {what} video backend, "
                                           f"which source {name!r} needs")


class V4L2Source(FrameSource):
    """A USB / CSI camera through Video4Linux2 (``0`` or ``/dev/video0``)."""

    kind = "v4l2"

    def __init__(self, device: int | str, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None, fourcc: str | None = None, name: str | None = None):
        super().__init__(name or (f"/dev/video{device}" if isinstance(device, int) else device))
        self.device = device
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc

    @property
    def path(self) -> str:
        return f"/dev/video{self.device}" if isinstance(self.device, int) else self.device

    def check(self) -> None:
        _require_backend(cv2.CAP_V4L2, self.name, "V4L2")
        if not os.path.exists(self.path):
            raise SourceNotFoundError(f"camera {self.path} not found: check the cable and `v4l2-ctl "
                                      f"--list-devices`, and set camera.source to an existing /dev/videoN")
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise SourceOpenError(f"no permission to open camera {self.path}: add the service user to the "
                                  f"'video' group")

    def open(self) -> SourceSession:
        cap = cv2.VideoCapture(self.path, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(f"could not open camera {self.path} (in use by another program? "
                                  f"`fuser {self.path}`)")
        # Order matters to the driver: pixel format first, then size, then rate.
        if self.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self.fourcc))
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        # One driver buffer: frames are as fresh as possible rather than queued in the kernel.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
        got = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)) if code else "?"
        log.info("camera %s opened: %dx%d @ %.1f fps, %s", self.path, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                 int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), cap.get(cv2.CAP_PROP_FPS), got)
        return _CvSession(cap, self.name)


class GStreamerSource(FrameSource):
    """Any GStreamer pipeline ending in appsink (Jetson CSI, libcamera, hardware decoders)."""

    kind = "gstreamer"

    def __init__(self, pipeline: str, *, name: str | None = None):
        super().__init__(name or pipeline)
        self.pipeline = pipeline

    def check(self) -> None:
        if "appsink" not in self.pipeline:
            raise SourceSpecError(f"GStreamer pipeline {self.pipeline!r} must end in '! appsink' so OpenCV "
                                  f"can take the frames")
        _require_backend(cv2.CAP_GSTREAMER, self.name, "GStreamer")

    def open(self) -> SourceSession:
        cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(f"GStreamer pipeline did not start: {self.pipeline!r} (try it with "
                                  f"gst-launch-1.0, replacing appsink by fakesink)")
        return _CvSession(cap, self.name)


class StreamSource(FrameSource):
    """An RTSP / HTTP(S) camera stream through FFmpeg, with open and read timeouts so a dead link fails
    instead of hanging forever."""

    kind = "stream"

    def __init__(self, url: str, *, ffmpeg_options: str | None = None, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 20.0, name: str | None = None):
        super().__init__(name or redact_url(url))
        self.url = url
        scheme = urlsplit(url).scheme.lower()
        self.ffmpeg_options = ffmpeg_options if ffmpeg_options is not None else (
            DEFAULT_RTSP_FFMPEG_OPTIONS if scheme.startswith("rtsp") else DEFAULT_FFMPEG_OPTIONS)
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s

    def check(self) -> None:
        _require_backend(cv2.CAP_FFMPEG, self.name, "FFmpeg")
        parts = urlsplit(self.url)
        if parts.scheme.lower() not in STREAM_SCHEMES or not parts.netloc:
            raise SourceSpecError(f"stream URL {self.name!r} is not a {'/'.join(STREAM_SCHEMES)} URL "
                                  f"with a host")

    def open(self) -> SourceSession:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
        with _FFMPEG_OPEN_LOCK:
            previous = os.environ.get(FFMPEG_OPTIONS_ENV)
            os.environ[FFMPEG_OPTIONS_ENV] = self.ffmpeg_options
            try:
                cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
            finally:
                if previous is None:
                    os.environ.pop(FFMPEG_OPTIONS_ENV, None)
                else:
                    os.environ[FFMPEG_OPTIONS_ENV] = previous
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(f"could not open stream {self.name} (camera off, wrong URL or "
                                  f"credentials, or no network)")
        return _CvSession(cap, self.name)


def _open_video_file(path: Path) -> cv2.VideoCapture:
    api = cv2.CAP_FFMPEG if backend_available(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    with _FFMPEG_OPEN_LOCK:
        return cv2.VideoCapture(str(path), api)


DAMAGED_RUN_LIMIT = 25  # consecutive unreadable frames in a recording that end it (a broken tail)


class VideoFileSource(FrameSource):
    """A recorded video, optionally looped; positions come from the frame count and the file's rate."""

    kind = "file"
    timed = True

    def __init__(self, path: str | Path, *, loop: bool = False, name: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(name or str(path))
        self.path = Path(path)
        self.loop = loop
        self.max_pixels = max_pixels
        self.finite = not loop

    def check(self) -> None:
        if not self.path.exists():
            raise SourceNotFoundError(f"video file {self.path} not found")
        if not self.path.is_file():
            raise SourceSpecError(f"{self.path} is not a file")
        cap = _open_video_file(self.path)
        try:
            if not cap.isOpened():
                raise SourceSpecError(f"{self.path}: not a video OpenCV can read (corrupt, or a codec this "
                                      f"OpenCV build lacks; try re-encoding to H.264 .mp4 or MJPG .avi)")
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
            try:
                check_pixels(w, h, self.max_pixels, f"{self.path}: frames")
            except ImageReadError as exc:
                raise SourceSpecError(str(exc)) from None
        finally:
            cap.release()

    def open(self) -> SourceSession:
        return _VideoFileSession(self)


class _VideoFileSession(SourceSession):
    def __init__(self, source: VideoFileSource):
        self._src = source
        self._loop = 0
        self._offset_s = 0.0  # media time at the start of the current loop
        self._open()

    def _open(self) -> None:
        cap = _open_video_file(self._src.path)
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(f"could not open video file {self._src.path}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            log.warning("%s: the file does not state a usable frame rate (%s); assuming 25 fps",
                        self._src.path, fps)
            fps = 25.0
        self._cap, self._fps, self._n = cap, fps, 0

    def grab(self) -> Grab:
        """The next frame; a failed read in the middle of a damaged file is a damaged frame, not the end.

        OpenCV reports a block it cannot decode exactly like the end of the file (``grab()`` is
        False), and reads on after it. So a failure is the end only when the file says it has no
        more frames, or after ``DAMAGED_RUN_LIMIT`` failures in a row.
        """
        failures = 0
        while not self._cap.grab():
            failures += 1
            if failures < DAMAGED_RUN_LIMIT and not self._at_end():
                continue
            if not self._src.loop:
                raise EndOfSource()
            if self._n == 0:
                raise SourceReadError(f"{self._src.path}: no frame could be read")
            self._offset_s += self._n / self._fps
            self._cap.release()
            self._open()
            self._loop += 1
            if not self._cap.grab():
                raise SourceReadError(f"{self._src.path}: no frame could be read after rewinding")
            failures = 0
            break
        # the file's own frame number: a decoder that skips a damaged frame must not shift the timeline
        index = max(self._n, int(self._cap.get(cv2.CAP_PROP_POS_FRAMES) or 0) - 1)
        pos = index / self._fps
        grab = Grab(media_time_s=self._offset_s + pos, position_s=pos, position_index=index, loop=self._loop,
                    damaged_before=failures)
        self._n = index + 1
        return grab

    def _at_end(self) -> bool:
        total = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        return bool(total and math.isfinite(total) and total > 0 and self._n >= total)

    def retrieve(self) -> np.ndarray | None:
        ok, image = self._cap.retrieve()
        return image if ok else None

    def close(self) -> None:
        self._cap.release()


class ImageFolderSource(FrameSource):
    """A folder of images in name order (jpg, png, bmp, tif, webp); unreadable files are skipped.

    With ``fps`` the folder has a timeline (image i at i/fps s) for realtime pacing; without, images come
    as fast as the consumer takes them. The listing is re-read at each loop, so images added meanwhile
    are picked up.
    """

    kind = "folder"

    def __init__(self, path: str | Path, *, loop: bool = False, fps: float | None = None, name: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(name or str(path))
        self.path = Path(path)
        self.loop, self.fps = loop, fps
        self.max_pixels = max_pixels
        self.finite = not loop
        self.timed = fps is not None

    def check(self) -> None:
        if not self.path.exists():
            raise SourceNotFoundError(f"image folder {self.path} not found")
        if not self.path.is_dir():
            raise SourceSpecError(f"{self.path} is not a folder")
        self._list()

    def _list(self) -> list[Path]:
        try:
            return list_images(self.path)
        except (ImageReadError, OSError) as e:
            raise SourceOpenError(str(e)) from None

    def open(self) -> SourceSession:
        return _FolderSession(self)


class _FolderSession(SourceSession):
    def __init__(self, source: ImageFolderSource):
        self._src = source
        self._files = source._list()
        self._i = -1
        self._loop = 0
        self._seq = -1  # images handed out in this session, across loops (the media timeline)

    def grab(self) -> Grab:
        self._i += 1
        if self._i >= len(self._files):
            if not self._src.loop:
                raise EndOfSource()
            self._files = self._src._list()
            self._i, self._loop = 0, self._loop + 1
        self._seq += 1
        fps = self._src.fps
        return Grab(media_time_s=self._seq / fps if fps else None,
                    position_s=self._i / fps if fps else None, position_index=self._i,
                    path=str(self._files[self._i]), loop=self._loop)

    def retrieve(self) -> np.ndarray | None:
        path = self._files[self._i]
        try:
            return read_image(path, max_pixels=self._src.max_pixels)
        except (ImageReadError, OSError, cv2.error, MemoryError) as e:
            log.warning("skipped unreadable image: %s", e)
            return None

    def close(self) -> None:
        pass
