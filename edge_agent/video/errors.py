"""Errors of the frame sources, each worded for the operator who has to fix the camera setup.

The public ones derive from ``VideoSourceError`` (a ``ValueError``) so a CLI can print ``str(err)`` as one
line and exit, without a traceback. ``EndOfSource`` and ``SourceReadError`` are internal signals between a
source session and the capture loop.
"""

from __future__ import annotations

from edge_agent.errors import CracksegError, UserError


class VideoSourceError(UserError, ValueError):
    """The configured frame source cannot be used as given."""


class SourceSpecError(VideoSourceError):
    """The source string or camera settings are malformed (nothing to retry)."""


class SourceNotFoundError(VideoSourceError):
    """The file, folder or camera device named by the source does not exist."""


class VideoBackendUnavailableError(VideoSourceError):
    """The OpenCV build in use lacks the video backend this source needs (V4L2, GStreamer, FFmpeg)."""


class SourceOpenError(VideoSourceError):
    """The source exists but could not be opened right now (busy camera, unreachable stream)."""


class SourceReadError(CracksegError):
    """A read from an open source failed; the capture loop reconnects."""


class EndOfSource(CracksegError):
    """A finite source (file or folder, not looped) has no more frames."""
