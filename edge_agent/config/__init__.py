"""Agent configuration: pydantic sections (unknown keys refused) and a YAML loader with line numbers.

``AgentConfig`` is resolved lazily so that the section modules (camera, mqtt, ...) can import
this package's helpers without an import cycle.
"""

from __future__ import annotations

from typing import Any

from edge_agent.config.check import check_config_main
from edge_agent.config.errors import ConfigError, ConfigIssue, SecretError
from edge_agent.config.loader import load_config
from edge_agent.config.secrets import credential_path, model_public_key, read_secret
from edge_agent.config.sections import (
    HealthConfig,
    HttpConfig,
    LoggingConfig,
    ModelConfig,
)

__all__ = ["AgentConfig", "ConfigError", "ConfigIssue", "HealthConfig", "HttpConfig", "LoggingConfig", "ModelConfig",
           "SecretError", "check_config_main", "credential_path", "load_config", "model_public_key", "read_secret"]


def __getattr__(name: str) -> Any:
    if name == "AgentConfig":
        from edge_agent.config.agent import AgentConfig

        return AgentConfig
    raise AttributeError(f"module 'edge_agent.config' has no attribute {name!r}")
