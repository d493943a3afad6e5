"""Communication with the office: the communicator interface, the MQTT client, the outbox.

The pipeline depends on :class:`Communicator` only; :func:`open_communicator` builds the
MQTT implementation from the ``mqtt:`` config section.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.comms.base import (
    Command,
    CommandError,
    CommandHandler,
    CommsStats,
    Communicator,
)
from edge_agent.comms.envelope import EnvelopeError
from edge_agent.comms.outbox import Outbox, OutboxEntry, OutboxError, OutboxStats
from edge_agent.comms.topics import TopicError, Topics
from edge_agent.config.mqtt import MqttConfig, MqttCredentialError


def open_communicator(config: MqttConfig, device_id: str, *, state_dir: str | Path | None = None,
                      status: Mapping[str, Any] | None = None) -> Communicator:
    """The MQTT communicator (imported lazily so that importing comms never needs paho)."""
    from edge_agent.comms.mqtt import MqttCommunicator

    return MqttCommunicator(config, device_id, state_dir=state_dir, status=status)


__all__ = ["Command", "CommandError", "CommandHandler", "Communicator", "CommsStats", "EnvelopeError",
           "MqttConfig", "MqttCredentialError", "Outbox", "OutboxEntry", "OutboxError", "OutboxStats",
           "TopicError", "Topics", "open_communicator"]
