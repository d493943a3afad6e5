"""The root agent config: one YAML file per device assembles every section.

Sections are owned by their domain packages (camera, measurement, position, mqtt, reporting) and only
assembled here, so each domain validates its own settings and this file stays a table of
contents.
"""

from __future__ import annotations

import socket

from pydantic import Field, field_validator, model_validator

from edge_agent.config.base import ConfigSection
from edge_agent.config.camera import CameraConfig
from edge_agent.config.coverage import CoverageConfig
from edge_agent.config.measurement import MeasurementConfig
from edge_agent.config.mqtt import MqttConfig
from edge_agent.config.position import PositionConfig
from edge_agent.config.reporting import ReportingConfig
from edge_agent.config.sections import (
    ConfigPath,
    HealthConfig,
    HttpConfig,
    LoggingConfig,
    ModelConfig,
    default_state_dir,
    validate_device_id,
)
from edge_agent.config.updates import UpdatesConfig


def _default_device_id() -> str:
    """The hostname, made topic-safe: good enough for a bench; fleets set device_id explicitly."""
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname()) or "edge"
    return name[:64].lstrip("_.-") or "edge"


class AgentConfig(ConfigSection):
    """Everything the agent needs to run on one vehicle computer."""

    device_id: str = Field(default_factory=_default_device_id, description="unique per vehicle; an MQTT topic "
                                                                           "level")
    model: ModelConfig = Field(default_factory=ModelConfig)
    camera: CameraConfig
    measurement: MeasurementConfig = Field(default_factory=MeasurementConfig)
    coverage: CoverageConfig = Field(default_factory=CoverageConfig)
    position: PositionConfig = Field(default_factory=PositionConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    reporting: ReportingConfig = Field(default_factory=ReportingConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    updates: UpdatesConfig = Field(default_factory=UpdatesConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    state_dir: ConfigPath = Field(default_factory=default_state_dir, description="outbox, sequence numbers, "
                                                                                  "installed models")

    @field_validator("device_id")
    @classmethod
    def _device_id_ok(cls, v: str) -> str:
        return validate_device_id(v)

    @model_validator(mode="after")
    def _replay_does_not_loop(self) -> AgentConfig:
        """A replayed GPS log follows the video's media time once: a looped clip would put every
        later lap's cracks at the first lap's positions."""
        if self.camera.loop and getattr(self.position.provider, "type", None) == "nmea-file":
            raise ValueError("camera.loop cannot be used with position type nmea-file (the log is replayed once, "
                             "in step with the video); set camera.loop: false")
        return self
