"""Crack-measurement settings (the ``measurement:`` section of a device config).

Everything that turns a binary crack mask into reported numbers lives here: the ground sampling
distance that converts pixels to millimetres, which image axis is the direction of travel,
noise filtering, the severity thresholds and the cross-frame tracking options. Defaults follow
ASTM D6433 (asphalt) so that a fresh install reports severities an inspector recognises; the GSD
default (1 mm/px) is only a placeholder and must be calibrated per camera mount
(docs/measurement.md explains how). Upper bounds refuse numbers that are surely typos (a GSD
of a metre per pixel, a crack wider than a lane) before they silently drop every detection.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_agent.config.base import MAX_PIXELS, MAX_TIMEOUT_S, ConfigSection

MAX_GSD_MM_PER_PX = 1000.0  # a metre per pixel: no crack is visible long before that
MAX_MM = 10_000.0  # 10 m: wider than a lane, longer than any one crack in one frame

TravelAxis = Literal["vertical", "horizontal"]
ImageMotion = Literal["down", "up", "left", "right"]
WidthStatistic = Literal["mean", "max"]


class SeverityConfig(ConfigSection):
    """Width thresholds of the severity levels.

    ASTM D6433 (longitudinal/transverse cracking in asphalt): low when the mean width is below
    10 mm, medium from 10 mm up to and including 75 mm, high above 75 mm. ``mean`` is the
    default statistic because the standard defines the levels on the mean width, and the
    maximum of a segmentation mask is dominated by junctions, spalled corners and mask blobs.
    """

    low_below_mm: float = Field(10.0, gt=0, le=MAX_MM, description="widths below this are 'low'")
    high_above_mm: float = Field(75.0, gt=0, le=MAX_MM, description="widths above this are 'high'; in between 'medium'")
    width_statistic: WidthStatistic = Field("mean", description="which crack width the thresholds apply to")

    @model_validator(mode="after")
    def _ordered(self) -> SeverityConfig:
        if self.high_above_mm < self.low_below_mm:
            raise ValueError(f"severity.high_above_mm ({self.high_above_mm}) must be >= severity.low_below_mm "
                             f"({self.low_below_mm})")
        return self


class ClassificationConfig(ConfigSection):
    """How a crack's type is decided from its skeleton and principal axis."""

    longitudinal_max_deg: float = Field(30.0, ge=0, le=90, description=(
        "a crack whose principal axis is within this angle of the travel axis is longitudinal"))
    transverse_min_deg: float = Field(60.0, ge=0, le=90, description=(
        "a crack whose principal axis is at least this far from the travel axis is transverse; "
        "between the two: diagonal"))
    alligator_min_loops: int = Field(2, ge=1, le=10_000, description=(
        "closed cells (holes in the crack) that make a crack network 'alligator'"))
    alligator_min_loop_area_mm2: float = Field(100.0, ge=0, le=MAX_MM**2, description=(
        "holes smaller than this are mask noise, not cells of a network"))
    alligator_min_branches: int = Field(4, ge=1, le=10_000, description=(
        "branch points that, together with alligator_min_density, make a crack 'alligator'"))
    alligator_min_density: float = Field(2.0, gt=0, le=1000, description=(
        "skeleton length / bounding-box diagonal from which a branched crack counts as a network "
        "(1.0 for a straight line)"))

    @model_validator(mode="after")
    def _ordered(self) -> ClassificationConfig:
        if self.transverse_min_deg < self.longitudinal_max_deg:
            raise ValueError(f"classification.transverse_min_deg ({self.transverse_min_deg}) must be >= "
                             f"classification.longitudinal_max_deg ({self.longitudinal_max_deg})")
        return self


class TrackingConfig(ConfigSection):
    """Reporting each crack once while it crosses the frame.

    The expected image shift between two frames comes from GPS speed x frame interval / GSD
    along the travel axis; without a speed the tracker uses the shift it measured on earlier
    matches. Cracks are then matched by overlap of the shifted bounding boxes.
    """

    enabled: bool = True
    image_motion: ImageMotion | None = Field(None, description=(
        "direction the road surface moves in the image while driving forward; null = 'down' for "
        "a vertical travel axis (top of the image is ahead), 'right' for a horizontal one"))
    min_iou: float = Field(0.1, gt=0, le=1, description="bounding-box overlap that makes two sightings one crack")
    margin_px: int = Field(8, ge=0, le=10_000, description=(
        "pixels added around boxes before matching: absorbs speed/GSD error and partly visible cracks"))
    max_missed_frames: int = Field(3, ge=0, le=100_000, description=(
        "a track not seen for more frames than this ends (missed detections in between are bridged)"))
    max_gap_s: float = Field(2.0, gt=0, le=MAX_TIMEOUT_S, description="a track not seen for longer than this ends")


MAX_MOUNT_OFFSET_M = 50.0  # a camera 50 m from its GPS antenna is not on the same vehicle


class MountConfig(ConfigSection):
    """Where the camera looks relative to the GPS antenna (what the office needs to place each crack).

    Both offsets are to the road point under the image centre, measured on the ground in the
    vehicle's frame: ahead of / right of the point under the antenna (docs/measurement.md,
    "Mount calibration").
    """

    offset_forward_m: float = Field(0.0, ge=-MAX_MOUNT_OFFSET_M, le=MAX_MOUNT_OFFSET_M, description=(
        "metres the image centre lies ahead of the GPS antenna (negative: behind it, e.g. a rear camera)"))
    offset_right_m: float = Field(0.0, ge=-MAX_MOUNT_OFFSET_M, le=MAX_MOUNT_OFFSET_M, description=(
        "metres the image centre lies to the right of the GPS antenna (negative: to the left)"))


class MeasurementConfig(ConfigSection):
    """From a crack mask to lengths, widths, types and severities in real units."""

    gsd_mm_per_px: float = Field(1.0, gt=0, le=MAX_GSD_MM_PER_PX, description=(
        "ground sampling distance: millimetres of road per image pixel (calibrate per mount; "
        "docs/measurement.md)"))
    gsd_x_mm_per_px: float | None = Field(None, gt=0, le=MAX_GSD_MM_PER_PX,
                                          description="horizontal GSD when it differs; null = gsd_mm_per_px")
    gsd_y_mm_per_px: float | None = Field(None, gt=0, le=MAX_GSD_MM_PER_PX,
                                          description="vertical GSD when it differs; null = gsd_mm_per_px")
    travel_axis: TravelAxis = Field("vertical", description=(
        "image axis along the direction of travel: longitudinal cracks run along it"))
    gap_close_px: int = Field(2, ge=0, le=15, description=(
        "gaps up to this many pixels inside one crack are bridged before splitting into cracks"))
    min_length_mm: float = Field(50.0, ge=0, le=MAX_MM, description="shorter cracks are dropped as noise")
    max_cracks_per_frame: int = Field(50, ge=1, le=100_000, description="the longest cracks of a frame are kept")
    polyline_epsilon_px: float = Field(2.0, ge=0, le=MAX_PIXELS, description=(
        "Douglas-Peucker tolerance of the reported polyline (0 = every skeleton pixel)"))
    severity: SeverityConfig = Field(default_factory=SeverityConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    mount: MountConfig = Field(default_factory=MountConfig)

    @model_validator(mode="after")
    def _motion_matches_axis(self) -> MeasurementConfig:
        motion = self.tracking.image_motion
        if motion is not None:
            along = "vertical" if motion in ("down", "up") else "horizontal"
            if along != self.travel_axis:
                raise ValueError(f"tracking.image_motion '{motion}' is {along} but travel_axis is "
                                 f"'{self.travel_axis}': make them agree")
        return self

    @property
    def gsd_x(self) -> float:
        """Millimetres per pixel along image x."""
        return self.gsd_x_mm_per_px or self.gsd_mm_per_px

    @property
    def gsd_y(self) -> float:
        """Millimetres per pixel along image y."""
        return self.gsd_y_mm_per_px or self.gsd_mm_per_px

    @property
    def gsd_along_travel(self) -> float:
        """Millimetres per pixel along the direction of travel (what vehicle motion shifts)."""
        return self.gsd_y if self.travel_axis == "vertical" else self.gsd_x

    @property
    def image_motion(self) -> ImageMotion:
        """Direction the road moves in the image, with the axis default resolved."""
        if self.tracking.image_motion is not None:
            return self.tracking.image_motion
        return "down" if self.travel_axis == "vertical" else "right"
