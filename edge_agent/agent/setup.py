"""What the agent decides before anything runs: how a source is queued and how a model is opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.config.agent import AgentConfig
from edge_agent.detectors import Segmenter, open_model
from edge_agent.errors import UserError
from edge_agent.video.factory import parse_source


class AgentError(UserError):
    """The agent cannot start or run as configured; the message says what to fix."""


def prepare_camera_config(cfg: AgentConfig) -> AgentConfig:
    """Files and folders are processed losslessly unless the config chose otherwise.

    A live camera must drop stale frames when inference falls behind; a recorded survey
    clip must not lose any, so its queue blocks instead (when ``queue_policy`` is unset).
    """
    cam = cfg.camera
    if "queue_policy" in cam.model_fields_set:
        return cfg
    try:
        kind = parse_source(cam.source, cam.kind).kind
    except Exception:
        return cfg  # the capture step reports the source problem with its own message
    if kind in ("file", "folder"):
        return cfg.model_copy(update={"camera": cam.model_copy(update={"queue_policy": "block"})})
    return cfg


def load_segmenter(model_cfg: Any, path: Path | None, gsd_mm_per_px: tuple[float, float] | None = None,
                   choice_cache: Path | None = None) -> Segmenter:
    """Open ``path`` (None: the configured model) with this device's backend, threads, key and threshold.

    ``gsd_mm_per_px`` (x, y) is the camera's ground resolution: frames are resampled to the
    model's own when the bundle declares one. ``choice_cache``: where ``backend: auto`` keeps
    its per-machine verdict.
    """
    public_key = None
    if model_cfg.public_key_file or model_cfg.public_key_credential:
        from edge_agent.config import model_public_key

        public_key = model_public_key(model_cfg)
    return open_model(path if path is not None else model_cfg.path, backend=model_cfg.backend,
                      threads=model_cfg.threads, providers=model_cfg.onnx_providers(), public_key=public_key,
                      require_signature=model_cfg.require_signature, precision=model_cfg.precision,
                      threshold=model_cfg.threshold, gsd_mm_per_px=gsd_mm_per_px, choice_cache=choice_cache)
