"""What the agent publishes per frame and how often it sends pictures (``reporting:`` section)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SnapshotConfig(BaseModel):
    """Rate-limited JPEG overlays on ``snapshots``: a picture for people, never for every frame."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    min_interval_s: float = Field(10.0, ge=0.0, description="at most one snapshot per this many seconds")
    only_with_cracks: bool = True
    max_width: int = Field(960, ge=64, description="snapshots are downscaled to at most this width")
    jpeg_quality: int = Field(80, ge=10, le=100)


class ReportingConfig(BaseModel):
    """Per-frame reporting choices."""

    model_config = ConfigDict(extra="forbid")

    every_frame: bool = Field(False, description="publish a detections message for every frame, also those "
                                                 "without cracks (survey coverage proof); default: only frames "
                                                 "with at least one crack")
    max_cracks_per_message: int = Field(200, ge=1, description="cracks beyond this are counted, not listed")
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
