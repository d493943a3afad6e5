"""Speed-adaptive frame selection (the ``coverage:`` section of a device config).

At 50 km/h a 1280x720 camera at 1.6 mm/px must process 13.4 frames per second to image every
metre with 10 % overlap; at 20 km/h 5.4, stopped none. With the vehicle's speed (GPS speed
over ground, or ``speed_mps`` when the receiver gives none) the agent processes just the
frames needed and skips the rest before decoding them::

    coverage:
      overlap: 0.1          # share of a frame's road strip seen again in the next frame
      speed_mps: null       # fallback speed; null = without a GPS speed every frame is processed

The health report and the run summary give ``coverage``: the fraction of the driven distance
that processed frames imaged (1.0 = every metre), with frames skipped on purpose counted apart
from frames dropped for lack of CPU.
"""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.base import ConfigSection


class CoverageConfig(ConfigSection):
    """Which frames the agent needs at the vehicle's speed."""

    enabled: bool = Field(True, description="skip frames whose road was already imaged (needs a speed)")
    overlap: float = Field(0.1, ge=0.0, le=0.9, description=(
        "fraction of one frame's road strip (along travel) that the next processed frame shows again"))
    speed_mps: float | None = Field(None, ge=0.0, le=100.0, description=(
        "speed used when the position source gives none (a test rig, a vehicle without GPS); null: "
        "process every frame when the speed is unknown"))
    stopped_interval_s: float = Field(5.0, gt=0.0, le=3600.0, description=(
        "while the vehicle stands still, one frame this often (health and watchdog stay alive)"))
