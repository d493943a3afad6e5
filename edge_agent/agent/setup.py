"""What the agent decides before anything runs: how a recorded source is queued, and its start-up error."""

from __future__ import annotations

from edge_agent.config.agent import AgentConfig
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
