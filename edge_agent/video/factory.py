"""From a source string / CameraConfig to a FrameSource and a FrameCapture.

The source string is what operators type (``--source``, ``camera.source``), so it is guessed from its
shape; ``camera.kind`` overrides the guess when a name is ambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edge_agent.config.camera import CameraConfig, SourceKind
from edge_agent.video.capture import FrameCapture, FrameSelectorLike
from edge_agent.video.errors import SourceNotFoundError, SourceSpecError
from edge_agent.video.pipelines import jetson_csi_pipeline, libcamera_pipeline
from edge_agent.video.sources import (
    STREAM_SCHEMES,
    FrameSource,
    GStreamerSource,
    ImageFolderSource,
    StreamSource,
    V4L2Source,
    VideoFileSource,
)

_EXPECTED = ("expected a camera index (0), /dev/videoN, rtsp:// or http(s):// URL, gst:<pipeline ending in "
             "appsink>, jetson-csi[:N], libcamera[:NAME], a video file, or a folder of images")
_PRESET = re.compile(r"^(jetson-csi|libcamera)(?::(.+))?$")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source string: its kind and what to open (device index/path, URL, pipeline or path).

    ``preset`` marks jetson-csi / libcamera, whose pipeline is built from the camera settings (``target``
    then holds the sensor number or libcamera camera name, or None).
    """

    kind: SourceKind
    target: int | str | None
    preset: str | None = None


def parse_source(source: str, kind: SourceKind | None = None) -> SourceSpec:
    """Classify a source string; raises SourceSpecError / SourceNotFoundError with what was expected."""
    s = source.strip()
    if not s:
        raise SourceSpecError(f"empty camera source; {_EXPECTED}")
    if kind is not None:
        return _with_kind(s, kind)
    if s.isdigit():
        return SourceSpec("v4l2", int(s))
    if s.startswith("/dev/"):
        return SourceSpec("v4l2", s)
    if m := _PRESET.match(s):
        return SourceSpec("gstreamer", m.group(2), preset=m.group(1))
    if s.startswith("gst:"):
        return SourceSpec("gstreamer", s[4:].strip())
    if "! appsink" in s or "!appsink" in s:
        return SourceSpec("gstreamer", s)
    scheme = urlsplit(s).scheme.lower() if "://" in s else ""
    if scheme:
        if scheme in STREAM_SCHEMES:
            return SourceSpec("stream", s)
        if scheme == "file":
            return parse_source(urlsplit(s).path)
        raise SourceSpecError(f"unsupported URL scheme {scheme!r} in camera source; {_EXPECTED}")
    path = Path(s).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path))
    if path.is_file():
        return SourceSpec("file", str(path))
    raise SourceNotFoundError(f"camera source {s!r}: no such file, folder or device; {_EXPECTED}")


def _with_kind(s: str, kind: SourceKind) -> SourceSpec:
    if kind == "v4l2":
        return SourceSpec("v4l2", int(s) if s.isdigit() else s)
    if kind == "gstreamer":
        if m := _PRESET.match(s):
            return SourceSpec("gstreamer", m.group(2), preset=m.group(1))
        return SourceSpec("gstreamer", s[4:].strip() if s.startswith("gst:") else s)
    if kind in ("file", "folder"):
        return SourceSpec(kind, str(Path(s).expanduser()))
    return SourceSpec(kind, s)


def make_source(cfg: CameraConfig) -> FrameSource:
    """The FrameSource the config describes (not opened yet)."""
    spec = parse_source(cfg.source, cfg.kind)
    if spec.kind == "v4l2":
        return V4L2Source(spec.target, width=cfg.width, height=cfg.height, fps=cfg.camera_fps,  # type: ignore[arg-type]
                          fourcc=cfg.fourcc, name=cfg.name)
    if spec.kind == "gstreamer":
        if spec.preset is not None:
            return GStreamerSource(_preset_pipeline(spec, cfg), name=cfg.name or cfg.source)
        return GStreamerSource(str(spec.target), name=cfg.name)
    if spec.kind == "stream":
        # The FFmpeg read timeout only frees readers the watchdog has already abandoned; it is kept
        # well above the stall timeout so stalls are seen (and counted) as stalls.
        return StreamSource(str(spec.target), ffmpeg_options=cfg.ffmpeg_options, open_timeout_s=cfg.open_timeout_s,
                            read_timeout_s=max(2.0, 4 * cfg.stall_timeout_s), name=cfg.name)
    if spec.kind == "file":
        return VideoFileSource(str(spec.target), loop=cfg.loop, name=cfg.name, max_pixels=cfg.max_pixels)
    return ImageFolderSource(str(spec.target), loop=cfg.loop, fps=cfg.fps, name=cfg.name, max_pixels=cfg.max_pixels)


def _preset_pipeline(spec: SourceSpec, cfg: CameraConfig) -> str:
    width, height = cfg.width or 1280, cfg.height or 720
    fps = cfg.camera_fps or 30.0
    if spec.preset == "jetson-csi":
        if spec.target is not None and not str(spec.target).isdigit():
            raise SourceSpecError(f"jetson-csi:N takes a sensor number, got {spec.target!r}")
        sensor = int(spec.target) if spec.target is not None else cfg.sensor_id
        return jetson_csi_pipeline(width, height, fps, sensor_id=sensor, flip_method=cfg.flip_method)
    return libcamera_pipeline(width, height, fps, camera_name=str(spec.target) if spec.target else None)


def capture_from_config(cfg: CameraConfig, selector: FrameSelectorLike | None = None) -> FrameCapture:
    """A FrameCapture for the config, not started: call ``start()`` (or use it in a ``with`` block),
    which checks the source and raises a VideoSourceError that says what to fix. ``selector``
    decides before decoding which frames are needed (speed-adaptive selection)."""
    return FrameCapture(make_source(cfg), fps=cfg.fps, realtime=cfg.realtime, queue_size=cfg.queue_size,
                        queue_policy=cfg.queue_policy, stall_timeout_s=cfg.stall_timeout_s,
                        open_timeout_s=cfg.open_timeout_s, backoff_min_s=cfg.reconnect_backoff_min_s,
                        backoff_max_s=cfg.reconnect_backoff_max_s,
                        max_reconnect_attempts=cfg.max_reconnect_attempts, selector=selector,
                        max_pixels=cfg.max_pixels)
