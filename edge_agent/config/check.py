"""``crackseg-edge check-config FILE``: every problem of a config, or ``OK`` and a summary.

Why apart from the loader: it is the operator's command on top of loading (printing, exit
status, warnings about a valid but risky config), not part of how the agent reads its config.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from edge_agent.config.errors import ConfigError
from edge_agent.config.loader import load_config


def _summary(cfg: Any) -> str:
    model = cfg.model
    model_text = str(model.path) if model.path else "shipped reference bundle"
    runtime = f"{model.backend}, {model.threads or 'all'} thread(s)"
    if model.backend == "onnx":
        runtime += f", providers {'/'.join(model.providers)}"
    mqtt = cfg.mqtt
    mqtt_text = getattr(mqtt, "url", None) or ":".join(
        str(v) for v in (getattr(mqtt, "host", None), getattr(mqtt, "port", None)) if v is not None) or "configured"
    http = f"http://{cfg.http.host}:{cfg.http.port}" if cfg.http.enabled else "http off"
    return (f"device {cfg.device_id}; model {model_text} ({runtime}); camera {cfg.camera.source}; mqtt {mqtt_text}; "
            f"{http}; state {cfg.state_dir}")


def check_config_main(path: str | Path) -> int:
    """``crackseg-edge check-config FILE``: every problem on stderr (exit 2), or ``OK: <summary>`` (exit 0)."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        print(f"{len(exc.issues)} problem(s) in {path}", file=sys.stderr)
        return 2
    if cfg.http.enabled and cfg.http.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: {path}: http.host {cfg.http.host} exposes /metrics and /model/info beyond this machine",
              file=sys.stderr)
    print(f"OK: {path}: {_summary(cfg)}")
    return 0
