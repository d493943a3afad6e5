"""The MQTT side of an ingest worker: a persistent MQTT 5 session on shared subscriptions, manual acks.

- Persistent session: ``clean_start=False`` and a Session Expiry Interval, under a client id
  that stays the same across restarts of this worker. The broker keeps the subscriptions and
  queues this worker's share of the traffic while it is down (Mosquitto: raise
  ``max_queued_messages``, its default of 1000 drops the rest), and re-sends what was
  delivered but not acknowledged when it comes back.
- Shared subscriptions ``$share/<group>/<prefix>/+/<kind>``: N workers in one group split the
  fleet's detections, health, snapshots and command responses. ``status`` is subscribed by
  every worker *without* ``$share``: it is retained (the current state of each vehicle), and
  MQTT 5 brokers do not hand retained messages to shared subscriptions (EMQX and HiveMQ follow
  the specification there; Mosquitto 2.0 happens to). Storing it is idempotent anyway.
- Manual acknowledgements (``manual_ack_set(True)``): the PUBACK of a QoS 1 message is sent
  only by ``ack()``, which the worker calls after the transaction holding the message has
  committed. A worker killed at any moment therefore loses nothing: the broker re-sends every
  message it never acknowledged. ``Receive Maximum`` lets the broker send more than
  Mosquitto's default of 20 unacknowledged messages, which batching needs.
- Acknowledgements never cross connections: a message delivered on an earlier connection is
  not acknowledged on a later one (the broker re-sends it on the new one, with a packet id
  that may by then mean another message).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from office.config import IngestConfig
from office.errors import UserError
from office.ingest.rows import Incoming

log = logging.getLogger(__name__)

SHARED_KINDS = ("detections", "health", "snapshots", "cmd/response")
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_mqtt_url(url: str) -> tuple[str, str, int]:
    """``mqtt://host:1883`` / ``mqtts://host:8883`` -> (scheme, host, port)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UserError(f"broker URL '{url}' is invalid ({exc}); write mqtt://host:1883 or mqtts://host:8883") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise UserError(f"broker URL '{url}' must start with mqtt:// or mqtts:// (TLS)")
    if not parts.hostname:
        raise UserError(f"broker URL '{url}' has no host; write mqtt://host:1883")
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query:
        raise UserError(f"broker URL '{url}' must be only scheme://host:port (credentials go in --username and "
                        "--password-file/--password-env)")
    return parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


def default_client_id(group: str) -> str:
    """Stable per host and group; give each worker on one host its own with --client-id."""
    return f"crackseg-office-{socket.gethostname()[:40]}-{group}"


def subscriptions(cfg: IngestConfig) -> list[str]:
    return [f"$share/{cfg.group}/{cfg.prefix}/+/{kind}" for kind in SHARED_KINDS] + [f"{cfg.prefix}/+/status"]


def _password(cfg: IngestConfig) -> str | None:
    if cfg.password_file is not None:
        try:
            value = cfg.password_file.read_text()
        except OSError as exc:
            raise UserError(f"--password-file {cfg.password_file}: {exc.strerror or exc}") from None
        value = value[:-1] if value.endswith("\n") else value
    elif cfg.password_env is not None:
        if cfg.password_env not in os.environ:
            raise UserError(f"--password-env {cfg.password_env}: the variable is not set")
        value = os.environ[cfg.password_env]
    else:
        return None
    if not value:
        raise UserError("the broker password is empty")
    return value


class MqttReceiver:
    """Receives the fleet's messages into ``sink`` (called on paho's network thread) and acks on request."""

    def __init__(self, cfg: IngestConfig, sink: Callable[[Incoming], None]):
        self.cfg = cfg
        self.sink = sink
        self.scheme, self.host, self.port = parse_mqtt_url(cfg.mqtt_url)
        self.client_id = cfg.client_id or default_client_id(cfg.group)
        self.topics = subscriptions(cfg)
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        password = _password(cfg)
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=MQTTProtocolVersion.MQTTv5)
        c.manual_ack_set(True)
        c.reconnect_delay_set(1, 30)
        if cfg.username:
            c.username_pw_set(cfg.username, password)
        if self.scheme == "mqtts":
            try:
                c.tls_set(ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                          certfile=str(cfg.cert_file) if cfg.cert_file else None,
                          keyfile=str(cfg.key_file) if cfg.key_file else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (OSError, ssl.SSLError) as exc:
                raise UserError(f"TLS files: {exc}") from None
        elif cfg.ca_file or cfg.cert_file:
            raise UserError("--ca-file/--cert-file need an mqtts:// broker URL")
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        self.client.connect_async(self.host, self.port, keepalive=self.cfg.keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect (the session stays at the broker for ``session_expiry_s``)."""
        with self._lock:
            self._generation += 1
            self._connected = False
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected

    # -- callbacks (paho's network thread) ----------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            log.error("MQTT: %s", self.last_error)
            return
        with self._lock:
            self._generation += 1
            self._connected = True
        self.last_error = None
        log.info("MQTT: connected to %s:%d as %s (session present: %s)", self.host, self.port, self.client_id,
                 bool(getattr(flags, "session_present", False)))
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.topics])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            self.last_error = f"subscription refused: {', '.join(bad)} (does the broker support shared subscriptions?)"
            log.error("MQTT: %s", self.last_error)
        else:
            log.info("MQTT: subscribed to %d filters", len(self.topics))
            self.subscribed.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        with self._lock:
            self._generation += 1
            self._connected = False
        if reason_code is not None and reason_code.is_failure:
            self.last_error = f"disconnected: {reason_code}"
            log.warning("MQTT: %s; reconnecting", self.last_error)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = msg.properties
        user = dict(getattr(props, "UserProperty", None) or []) if props is not None else {}
        ctype = getattr(props, "ContentType", None) if props is not None else None
        self.sink(Incoming(msg.topic, bytes(msg.payload), msg.qos, msg.mid, bool(msg.retain),
                           datetime.now(timezone.utc), self._generation, user, ctype))

    # -- acknowledgements (worker thread) ----------------------------------------------------
    def ack(self, items: Sequence[Incoming]) -> int:
        """PUBACK the QoS 1 items in order, skipping those of an earlier connection; returns how many."""
        sent = 0
        with self._lock:
            if not self._connected:
                return 0
            for item in items:
                if item.qos > 0 and item.generation == self._generation:
                    if self.client.ack(item.mid, item.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS:
                        sent += 1
        return sent
