"""A recorded survey made up: a clip of a road and the NMEA log of the drive, with the truth.

What the demo runs on and what the geolocation tests check against. A vehicle drives a known
track (``video.synthetic.Track``) at a constant speed; its GPS antenna is on the track. A
downward camera, mounted ``offset_forward_m`` ahead of and ``offset_right_m`` right of the
antenna, films the road (``video.synthetic.Road``) at ``fps``; a receiver logs GGA/RMC/VTG
at ``log_hz``, starting ``log_lead_s`` before the camera (crews start the logger first). So
the config that replays it is ``position: {provider: {type: nmea-file, path: LOG, offset_s:
log_lead_s}}`` and every crack's true place is known in WGS84 (``truth_lonlat``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.position import write_nmea_log
from edge_agent.position.history import enu_to_latlon
from edge_agent.video.synthetic import Road, RoadCrack, Track, road_crack, write_drive_video


def demo_track() -> Track:
    """A straight, a right-hand bend of 60 m radius, a straight: about 75 m heading east-north-east."""
    return Track(heading_deg=62.0).straight(24.0).arc(30.0, 60.0, right=True).straight(24.0)


def demo_cracks(offset_right_m: float = 0.5) -> list[RoadCrack]:
    """Cracks of every type and a range of widths, in the camera's strip of the lane."""
    d = offset_right_m
    spec = [("transverse", 7.0, 0.85, 3.0), ("longitudinal", 11.0, 1.6, 8.0), ("diagonal", 15.5, 0.8, 4.0),
            ("transverse", 20.0, 0.9, 12.0), ("alligator", 25.0, 0.55, 3.0), ("transverse", 31.0, 0.85, 5.0),
            ("longitudinal", 37.0, 2.0, 15.0), ("diagonal", 43.0, 0.8, 6.0), ("transverse", 49.0, 0.9, 25.0),
            ("alligator", 55.0, 0.5, 4.0), ("transverse", 61.0, 0.8, 4.0), ("longitudinal", 67.0, 1.5, 10.0)]
    out = []
    for i, (kind, s, length, width) in enumerate(spec):
        lateral = d + (0.1 if i % 2 else -0.1) * (kind == "longitudinal")
        out.append(road_crack(f"c{i + 1:02d}-{kind}", kind, s, lateral, length, width, seed=100 + i))
    return out


@dataclass
class SurveyDrive:
    """The drive, the camera and the receiver (see the module docstring); ``write()`` makes the files."""

    origin: tuple[float, float] = (52.520008, 13.404954)  # (lat, lon) of the track's start
    track: Track = field(default_factory=demo_track)
    cracks: list[RoadCrack] = field(default_factory=demo_cracks)
    speed_mps: float = 6.0
    fps: float = 12.0
    start_s: float = -1.0  # where on the track the antenna is when the video starts
    duration_s: float = 12.0
    size: tuple[int, int] = (480, 320)
    gsd_mm: float = 2.5
    offset_forward_m: float = 1.6
    offset_right_m: float = 0.5
    log_hz: float = 1.0
    log_lead_s: float = 4.0
    video_start: datetime = datetime(2024, 5, 1, 9, 30, 0, tzinfo=timezone.utc)
    marking_d: float | None = 0.95  # a broken lane line at the right edge of the view...
    dashes: tuple[float, float] | None = (3.0, 3.0)
    marking_s: tuple[float, float] | None = (-20.0, 2.2)  # ...up to a junction, before the cracks begin
    shadows: tuple[tuple[float, float, float], ...] = ((40.2, 0.6, 55.0),)
    seed: int = 7

    @property
    def frames(self) -> int:
        return round(self.duration_s * self.fps)

    def s_at(self, media_s: float) -> float:
        """Track distance of the antenna at media time ``media_s``."""
        return self.start_s + self.speed_mps * media_s

    def road(self) -> Road:
        reach = self.offset_forward_m + self.size[1] * self.gsd_mm / 2000 + 1.0
        s0 = self.s_at(0.0) - reach
        s1 = self.s_at(self.duration_s) + reach
        return Road(self.track, self.cracks, (s0, s1), (self.offset_right_m - 1.0, self.offset_right_m + 1.0),
                    self.gsd_mm, self.marking_d, self.dashes, self.marking_s, self.shadows, self.seed)

    def lonlat(self, east: np.ndarray, north: np.ndarray) -> np.ndarray:
        """Local east/north metres -> (N, 2) of (lon, lat)."""
        pts = [enu_to_latlon(self.origin[0], self.origin[1], float(e), float(n)) for e, n in zip(east, north)]
        return np.array([(lon, lat) for lat, lon in pts]).reshape(-1, 2)

    def truth_lonlat(self) -> dict[str, dict[str, Any]]:
        """Each crack: its type, drawn width and true centre lines as (lon, lat) arrays."""
        return {c.name: {"kind": c.kind, "width_mm": c.width_mm,
                         "lines": [self.lonlat(line[:, 0], line[:, 1]) for line in c.world_lines(self.track)]}
                for c in self.cracks}

    def nmea_epochs(self) -> list[tuple[datetime, float, float, float, float]]:
        epochs = []
        n = int((self.duration_s + self.log_lead_s + 2.0) * self.log_hz) + 1
        for k in range(n):
            media = k / self.log_hz - self.log_lead_s
            e, n_, h = self.track.pose(self.s_at(media))
            lat, lon = enu_to_latlon(self.origin[0], self.origin[1], e, n_)
            epochs.append((self.video_start + timedelta(seconds=media), lat, lon, self.speed_mps, h))
        return epochs

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """(video, NMEA log) in ``folder``."""
        folder = Path(folder)
        road = self.road()
        poses = [self.track.pose(self.s_at(k / self.fps)) for k in range(self.frames)]
        video = write_drive_video(folder / "survey.mp4", road, poses, self.size, self.fps, (self.gsd_mm, self.gsd_mm),
                                  "up", self.offset_forward_m, self.offset_right_m)
        log = write_nmea_log(folder / "survey.nmea", self.nmea_epochs())
        truth = {name: {**t, "lines": [line.tolist() for line in t["lines"]]}
                 for name, t in self.truth_lonlat().items()}
        (folder / "truth.json").write_text(json.dumps(truth))
        return video, log

    def agent_sections(self, video: Path, log: Path) -> dict[str, dict[str, Any]]:
        """Config sections that run the agent on these files (camera, measurement, position)."""
        return {"camera": {"source": str(video), "realtime": False},
                "measurement": {"gsd_mm_per_px": self.gsd_mm,
                                "min_length_mm": 150.0,  # shorter marks are texture, not cracks worth a record
                                "mount": {"offset_forward_m": self.offset_forward_m,
                                          "offset_right_m": self.offset_right_m}},
                "position": {"provider": {"type": "nmea-file", "path": str(log), "offset_s": self.log_lead_s}}}
