"""Topic names under ``<prefix>/<device_id>/``, in one place so docs, agent and tests agree."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_agent.errors import UserError

STATUS = "status"
DETECTIONS = "detections"
HEALTH = "health"
SNAPSHOTS = "snapshots"
CMD = "cmd"
CMD_RESPONSE = "cmd/response"

_LEVEL_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class TopicError(UserError, ValueError):
    """A topic suffix or command name that would escape the device's own subtree."""


def check_suffix(suffix: str) -> str:
    """Suffixes are plain levels joined by '/': no wildcards, no empty levels, no leading '/'.

    Checked because a suffix like ``../other`` has no meaning in MQTT but ``+`` or ``#`` in a
    publish topic makes paho raise deep in a worker thread.
    """
    if not suffix or any(not _LEVEL_RE.match(level) for level in suffix.split("/")):
        raise TopicError(f"topic suffix '{suffix}' must be '/'-separated levels of letters, digits, '_', '-' "
                         "or '.'")
    return suffix


@dataclass(frozen=True)
class Topics:
    """All topics of one device."""

    prefix: str
    device_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    def topic(self, suffix: str) -> str:
        return f"{self.base}/{check_suffix(suffix)}"

    @property
    def status(self) -> str:
        return self.topic(STATUS)

    @property
    def detections(self) -> str:
        return self.topic(DETECTIONS)

    @property
    def health(self) -> str:
        return self.topic(HEALTH)

    @property
    def snapshots(self) -> str:
        return self.topic(SNAPSHOTS)

    @property
    def cmd_filter(self) -> str:
        """The only subscription: this device's commands, never another device's."""
        return f"{self.base}/{CMD}/+"

    @property
    def cmd_response(self) -> str:
        return self.topic(CMD_RESPONSE)

    def command_name(self, topic: str) -> str | None:
        """``<base>/cmd/<name>`` -> name; None for responses and for anything outside this device."""
        head = f"{self.base}/{CMD}/"
        if not topic.startswith(head):
            return None
        name = topic[len(head):]
        if not name or "/" in name or name == "response":
            return None
        return name
