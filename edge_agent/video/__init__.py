"""Frame sources (V4L2, GStreamer, RTSP/HTTP, video file, image folder) and the capture loop that keeps
the freshest timestamped frames flowing, with a stall watchdog and reconnects. See docs/cameras.md."""

from edge_agent.video.capture import (
    CaptureState,
    CaptureStats,
    FrameCapture,
)
from edge_agent.video.errors import (
    SourceNotFoundError,
    SourceOpenError,
    SourceSpecError,
    VideoBackendUnavailableError,
    VideoSourceError,
)
from edge_agent.video.factory import (
    SourceSpec,
    capture_from_config,
    make_source,
    parse_source,
)
from edge_agent.video.frame import EndOfStream, Frame, iso_utc
from edge_agent.video.pacing import FrameRateLimiter
from edge_agent.video.pipelines import jetson_csi_pipeline, libcamera_pipeline
from edge_agent.video.sources import (
    FrameSource,
    GStreamerSource,
    ImageFolderSource,
    StreamSource,
    V4L2Source,
    VideoFileSource,
    backend_available,
)

__all__ = [
    "CaptureState", "CaptureStats", "EndOfStream", "Frame", "FrameCapture", "FrameRateLimiter", "FrameSource",
    "GStreamerSource", "ImageFolderSource", "SourceNotFoundError", "SourceOpenError", "SourceSpec",
    "SourceSpecError", "StreamSource", "V4L2Source", "VideoBackendUnavailableError", "VideoFileSource",
    "VideoSourceError", "backend_available", "capture_from_config", "iso_utc", "jetson_csi_pipeline",
    "libcamera_pipeline", "make_source", "parse_source",
]
