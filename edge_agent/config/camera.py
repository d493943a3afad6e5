"""Camera / frame-source settings (the ``camera:`` section of a device config).

One string says where frames come from (see ``edge_agent.video.factory.parse_source`` and docs/cameras.md);
everything else tunes how: requested capture format, target frame rate, and how hard to try when the
camera or stream goes away on the road.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge_agent.config.base import MAX_FPS, MAX_PIXELS, MAX_TIMEOUT_S, ConfigSection

SourceKind = Literal["v4l2", "gstreamer", "stream", "file", "folder"]
QueuePolicy = Literal["drop_oldest", "block"]


class CameraConfig(ConfigSection):
    """Where frames come from and how they are captured."""

    source: str = Field(min_length=1, description=(
        "0 or /dev/video0 (V4L2 camera), rtsp://... or http(s)://... (stream), gst:<pipeline> or a "
        "pipeline ending in '! appsink' (GStreamer), jetson-csi[:N] or libcamera[:N] (built GStreamer "
        "pipelines), a video file, or a folder of images"))
    kind: SourceKind | None = Field(None, description="force the source kind instead of guessing it from source")
    name: str | None = Field(None, description="name put on frames and stats; default: the source, "
                                               "with any URL password removed")
    width: int | None = Field(None, gt=0, le=MAX_PIXELS, description="requested capture width (cameras and "
                                                                     "pipelines)")
    height: int | None = Field(None, gt=0, le=MAX_PIXELS, description="requested capture height (cameras and "
                                                                      "pipelines)")
    camera_fps: float | None = Field(None, gt=0, le=MAX_FPS, description="frame rate requested from the "
                                                                         "camera/pipeline")
    fps: float | None = Field(None, gt=0, le=MAX_FPS, description=(
        "target frame rate delivered to the pipeline; extra frames are skipped. None: every frame"))
    fourcc: str | None = Field(None, description="V4L2 pixel format, e.g. MJPG or YUYV")
    sensor_id: int = Field(0, ge=0, le=255, description="jetson-csi / libcamera camera number")
    flip_method: int = Field(0, ge=0, le=7, description="jetson-csi nvvidconv flip-method (2 = rotate 180)")
    loop: bool = Field(False, description="files and folders: start over at the end instead of ending")
    realtime: bool = Field(True, description=(
        "files and folders: pace frames at the file's frame rate (folder: at fps) like a live camera; "
        "false: as fast as possible"))
    ffmpeg_options: str | None = Field(None, description=(
        "streams: OPENCV_FFMPEG_CAPTURE_OPTIONS, 'key;value|key;value'; default: low-latency options, "
        "rtsp_transport;tcp for rtsp"))
    stall_timeout_s: float = Field(5.0, gt=0, le=MAX_TIMEOUT_S, description="no frame for this long -> reopen "
                                                                            "the source")
    open_timeout_s: float = Field(10.0, gt=0, le=MAX_TIMEOUT_S, description="give up on one open attempt after "
                                                                            "this long")
    reconnect_backoff_min_s: float = Field(0.5, gt=0, le=MAX_TIMEOUT_S, description="first wait before reopening")
    reconnect_backoff_max_s: float = Field(30.0, gt=0, le=MAX_TIMEOUT_S, description="the wait doubles up to this")
    max_reconnect_attempts: int | None = Field(None, ge=0, description=(
        "consecutive failed reopen attempts before giving up (state failed); None: retry forever"))
    queue_size: int = Field(4, ge=1, le=1000, description="frames buffered for the consumer")
    max_pixels: int = Field(40_000_000, ge=1, le=268_435_456, description=(
        "frames (and images of a folder) larger than this many pixels are refused before decoding: a small file "
        "can declare a gigapixel image"))
    queue_policy: QueuePolicy = Field("drop_oldest", description=(
        "drop_oldest: a slow consumer gets the freshest frames (live use); block: the reader waits, "
        "nothing is lost (offline processing of files)"))

    @field_validator("fourcc")
    @classmethod
    def _fourcc_is_four_chars(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 4 or not v.isascii()):
            raise ValueError(f"fourcc must be 4 ASCII characters like MJPG or YUYV, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CameraConfig:
        if (self.width is None) != (self.height is None):
            raise ValueError("set both width and height, or neither")
        if self.reconnect_backoff_min_s > self.reconnect_backoff_max_s:
            raise ValueError(f"reconnect_backoff_min_s ({self.reconnect_backoff_min_s}) is larger than "
                             f"reconnect_backoff_max_s ({self.reconnect_backoff_max_s})")
        return self
