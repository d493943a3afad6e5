"""Run the real agent CLI as a separate process with a generated config (shared by agent tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

DEVICE = "van-e2e"


def write_config(tmp: Path, model_file: Path | None, source: str, url: str, device: str = DEVICE,
                 **sections) -> Path:
    """An agent YAML in ``tmp``; ``model_file`` None = the shipped bundle; ``sections`` merge into the defaults."""
    cfg = {
        "device_id": device,
        "model": {"path": str(model_file) if model_file else None, "threads": 1},
        "camera": {"source": source, "realtime": False},
        "mqtt": {"url": url, "reconnect_min_s": 1, "reconnect_max_s": 1},
        "reporting": {"every_frame": True},
        "health": {"interval_s": 1.0},
        "http": {"enabled": False},
        "state_dir": str(tmp / "state"),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def agent(config: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"agent exited {proc.returncode}\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])
