"""The communicator interface the agent talks to (as in Frigate), so the pipeline never
imports paho and another transport could replace MQTT without touching it.

The pipeline calls the typed helpers (``publish_detection``, ``publish_health``...), which
only fix the topic, QoS and persistence of :meth:`Communicator.publish`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from edge_agent.comms import topics
from edge_agent.errors import CracksegError


class CommandError(CracksegError):
    """Raised by a command handler to answer ``ok: false`` with this message (no traceback logged)."""


@dataclass(frozen=True)
class Command:
    """One command received on ``<prefix>/<device_id>/cmd/<name>``.

    ``args`` is the JSON object sent (empty for an empty payload); ``request_id`` is echoed in
    the response so the sender can match it: the payload's ``request_id``/``id``, else its
    envelope ``msg_id``. ``verified_key_id`` is filled in by the command registry once a
    signature was verified.
    """

    name: str
    args: dict[str, Any]
    topic: str
    request_id: str | None = None
    correlation_data: bytes | None = None
    raw: bytes = b""
    verified_key_id: str | None = None  # set only after a signature check passed; never from the payload
    parse_error: str | None = None  # why the payload could not be read as a JSON object (then args is empty)

    @property
    def origin(self) -> str:
        """Who sent it, as far as the device has proven: the verified signing key, else the topic.

        A ``key_id`` field in an unsigned (or unverified) payload is a claim, not an origin:
        audit records must never show it as one.
        """
        return f"key:{self.verified_key_id}" if self.verified_key_id else self.topic


CommandHandler = Callable[[Command], "Mapping[str, Any] | None"]


@dataclass(frozen=True)
class CommsStats:
    """Numbers for health reports; ``as_dict()`` is what goes into the health payload."""

    connected: bool
    link_state: str  # "connecting" | "connected" | "disconnected" | "stopped"
    reconnects: int
    last_error: str | None
    outbox_depth: int
    outbox_bytes: int
    outbox_oldest_age_s: float | None
    dropped: int
    published: int
    acked: int
    rejected: int
    inflight: int
    skipped_offline: int
    commands: int
    outbox_writable: bool = True  # False once the outbox is closed (shutdown) or unusable
    outbox_corrupt: int = 0  # stored messages found damaged: quarantined, never sent
    outbox_lost_files: int = 0  # unusable outbox files moved aside at start
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Communicator(ABC):
    """Publish enveloped messages under the device's topic tree and receive its commands."""

    #: QoS used by :meth:`publish_detection`; implementations set it from their config.
    detections_qos: int = 1
    #: message expiry (s) used by :meth:`publish_health`; None = never expire.
    health_expiry_s: int | None = None

    @abstractmethod
    def start(self) -> None:
        """Connect in the background; returns at once, messages queue until the link is up."""

    @abstractmethod
    def stop(self, flush_timeout: float = 10.0) -> bool:
        """Flush queued messages (up to ``flush_timeout`` s), say ``stopped``, disconnect.

        Returns True when nothing was left queued; what is left stays on disk for the next start.
        """

    @abstractmethod
    def publish(self, topic_suffix: str, payload: Mapping[str, Any] | bytes, *, qos: int = 0, retain: bool = False,
                persistent: bool = False, ts: float | datetime | None = None,
                expiry_s: int | None = None) -> bool:
        """Publish ``payload`` on ``<prefix>/<device_id>/<topic_suffix>``.

        A dict is wrapped in the envelope (``ts`` = capture time, default now); bytes are sent
        as is. ``persistent`` messages go through the outbox and are kept until the broker
        acknowledges them; the others are skipped (and counted) while offline. Returns True if
        the message was queued or handed to the client, False if skipped or dropped.
        """

    @abstractmethod
    def subscribe_commands(self, handler: CommandHandler) -> None:
        """Call ``handler`` for each command; its return value (or CommandError) is the response."""

    @abstractmethod
    def flush(self, timeout: float) -> bool:
        """Wait until every persistent message is acknowledged; False on timeout."""

    @property
    @abstractmethod
    def is_connected(self) -> bool:
        """True while the broker link is up."""

    @abstractmethod
    def stats(self) -> CommsStats:
        """A snapshot of link and outbox numbers."""

    @abstractmethod
    def set_status(self, **fields: Any) -> None:
        """Fields (model name/version...) sent with every status message from now on."""

    # -- typed helpers -------------------------------------------------------------------
    def publish_detection(self, payload: Mapping[str, Any], ts: float | datetime) -> bool:
        """A detection: persistent, kept until acknowledged, ``ts`` = frame capture time."""
        return self.publish(topics.DETECTIONS, payload, qos=self.detections_qos, persistent=True, ts=ts)

    def publish_health(self, payload: Mapping[str, Any], ts: float | datetime | None = None) -> bool:
        """A periodic health report: QoS 0, skipped offline, expires so stale health is not shown."""
        return self.publish(topics.HEALTH, payload, qos=0, ts=ts, expiry_s=self.health_expiry_s)

    @abstractmethod
    def publish_snapshot(self, jpeg: bytes, ts: float | datetime, **fields: Any) -> bool:
        """A JPEG (the caller rate-limits): raw bytes or base64 JSON, per the implementation."""
