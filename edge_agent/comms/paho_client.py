"""The paho client as this project needs it: MQTT 5 or 3.1.1, TLS, backoff, and quiet logs.

Why a module of its own: building a correctly configured client (callback API v2, TLS files
checked at start, the inflight window, one log line per real problem) is one job; the
communicator's queueing and delivery logic is another.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.errors import UserError


class _PahoNoise(logging.Filter):
    """Drops paho 2.2's ERROR "Client is not connected" that its loop logs on every reconnect
    attempt and at every clean shutdown: the link state is logged once by this module instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


class MqttSetupError(UserError, RuntimeError):
    """The MQTT client cannot be set up (TLS files unreadable, started twice...)."""


def make_paho_client(cfg: Any, device_id: str, password: str | None, max_inflight: int, v5: bool) -> paho.Client:
    """A paho client (callbacks not set) for the ``mqtt:`` config section; MqttSetupError for bad TLS files."""
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cfg.resolved_client_id(device_id),
                         protocol=protocol, clean_session=None if v5 else True)
    paho_log = logging.getLogger("paho")
    if not any(isinstance(f, _PahoNoise) for f in paho_log.filters):
        paho_log.addFilter(_PahoNoise())
    client.enable_logger(paho_log)
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
    client.max_inflight_messages_set(max_inflight)
    if cfg.tls_enabled:
        tls = cfg.tls
        try:
            client.tls_set(ca_certs=str(tls.ca_file) if tls and tls.ca_file else None,
                           certfile=str(tls.cert_file) if tls and tls.cert_file else None,
                           keyfile=str(tls.key_file) if tls and tls.key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise MqttSetupError(f"mqtt.tls: cannot load the CA/certificate/key files ({exc}); check they are "
                                 "PEM files that match") from None
        if tls is not None and tls.insecure:
            client.tls_insecure_set(True)
    if cfg.username:
        client.username_pw_set(cfg.username, password)
    return client


def publish_properties(v5: bool, content_type: str | None, expiry_s: int | None,
                       user: tuple[tuple[str, str], ...] | list[tuple[str, str]] | None) -> Properties | None:
    """MQTT 5 PUBLISH properties (content type, expiry, user properties); None on MQTT 3.1.1."""
    if not v5:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if content_type:
        props.ContentType = content_type
    if expiry_s:
        props.MessageExpiryInterval = int(expiry_s)
    if user:
        props.UserProperty = list(user)
    return props
