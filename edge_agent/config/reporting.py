"""What the agent publishes per frame and how often it sends pictures (``reporting:`` section)."""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.base import MAX_PIXELS, MAX_TIMEOUT_S, ConfigSection


class SnapshotConfig(ConfigSection):
    """Rate-limited JPEG overlays on ``snapshots``: a picture for people, never for every frame."""

    enabled: bool = False
    min_interval_s: float = Field(10.0, ge=0.0, le=MAX_TIMEOUT_S, description="at most one snapshot per this "
                                                                               "many seconds")
    only_with_cracks: bool = True
    max_width: int = Field(960, ge=64, le=MAX_PIXELS, description="snapshots are downscaled to at most this width")
    jpeg_quality: int = Field(80, ge=10, le=100)


class ReportingConfig(ConfigSection):
    """Per-frame reporting choices."""

    every_frame: bool = Field(False, description="publish a detections message for every frame, also those "
                                                 "without cracks (survey coverage proof); default: only frames "
                                                 "with at least one crack")
    max_cracks_per_message: int = Field(200, ge=1, le=100_000, description="cracks beyond this are counted, not listed")
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
