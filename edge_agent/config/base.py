"""What every config section shares: unknown keys refused, numbers finite, file checks that cannot crash.

Why a common base: a rule that each section has to remember is a rule one section forgets.
``allow_inf_nan=False`` because YAML reads ``.inf`` and ``.nan`` as floats and pydantic
accepts them by default: ``measurement.gsd_mm_per_px: .inf`` passed check-config, then every
crack was infinitely long and filtered out (0 of 10 detections sent); ``camera.fps: .inf`` and
``health.heartbeat_timeout_s: .inf`` passed too. Upper bounds stay per field (``le=``), next
to the unit they bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Bounds shared by several sections, in their units.
MAX_TIMEOUT_S = 24 * 3600.0  # no wait or timeout on a vehicle is sensibly longer than a day
MAX_AGE_S = 366 * 24 * 3600.0  # retention-style ages: a year
MAX_FPS = 1000.0  # no camera pipeline here delivers more frames per second
MAX_PIXELS = 16384  # a frame side; beyond any camera a vehicle carries

# Float types carrying those bounds, for fields whose other constraints stay at the field.
Seconds = Annotated[float, Field(le=MAX_TIMEOUT_S)]
Age = Annotated[float, Field(le=MAX_AGE_S)]


class ConfigSection(BaseModel):
    """Base of every config section: unknown keys are errors, inf and NaN are refused everywhere."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def path_exists(path: Path, *, file: bool = False) -> bool:
    """``path.exists()`` / ``is_file()`` for validators: an OSError becomes a ValueError.

    Why: pathlib raises for a name too long, a permission-denied parent or a symlink loop
    (ENAMETOOLONG, EACCES, ELOOP in some Python versions), and pydantic lets anything but a
    ValueError escape as a crash instead of a config error naming the key and line.
    """
    try:
        return path.is_file() if file else path.exists()
    except OSError as exc:
        raise ValueError(f"cannot look at {str(path)[:200]}: {exc.strerror or exc}") from None
