"""Config of a recorded survey: the NMEA log path is relative to the config file; no looping with a replayed log."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config.loader import ConfigError, load_config

RMC = "$GPRMC,000000.00,A,5200.0000,N,00400.0000,E,0.0,0.0,010124,,,A*6B\n"


def test_relative_log_path_is_relative_to_the_config_file(tmp_path: Path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "survey.nmea").write_text(RMC)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"camera: {{source: {tmp_path}}}\n"
                        "position: {provider: {type: nmea-file, path: logs/survey.nmea}}\n")
    cfg = load_config(cfg_file)
    assert Path(cfg.position.provider.path) == tmp_path / "logs" / "survey.nmea"  # type: ignore[union-attr]


def test_a_looped_clip_cannot_replay_a_log(tmp_path: Path):
    (tmp_path / "s.nmea").write_text(RMC)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"camera: {{source: {tmp_path}, loop: true}}\n"
                        "position: {provider: {type: nmea-file, path: s.nmea}}\n")
    with pytest.raises(ConfigError, match="camera.loop cannot be used with position type nmea-file"):
        load_config(cfg_file)
