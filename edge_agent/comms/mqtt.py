"""MQTT communicator (paho-mqtt 2, callback API v2) with the SQLite outbox behind detections.

Threads and why:

- paho's network thread (``loop_start``) reads/writes the socket and reconnects with
  exponential backoff (``reconnect_delay_set``). Its callbacks only record state and hand work
  to queues: paho calls ``on_publish`` while holding its own message lock, so taking any lock
  of ours there could deadlock against a thread inside ``publish()``.
- the outbox sender hands at most ``outbox.inflight`` unacknowledged rows to paho, in row (=
  seq) order, and deletes a row when its PUBACK arrives. paho keeps handed-over QoS>0 messages
  across reconnects and re-sends them itself, so the sender never re-reads them within one
  process; after a restart every row still on disk is sent again (same bytes, same msg_id).
- the command worker runs command handlers, so a slow handler cannot stall keepalives.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.comms import envelope, topics
from edge_agent.comms.base import (
    Command,
    CommandHandler,
    CommsStats,
    Communicator,
)
from edge_agent.comms.commands import CommandDispatcher
from edge_agent.comms.envelope import EnvelopeError
from edge_agent.comms.outbox import Outbox, OutboxEntry
from edge_agent.comms.paho_client import MqttSetupError, make_paho_client, publish_properties
from edge_agent.comms.topics import TopicError, Topics
from edge_agent.config.mqtt import MqttConfig, resolve_password
from edge_agent.config.sections import default_state_dir, validate_device_id

log = logging.getLogger(__name__)

JSON = "application/json"
_SENDER_TICK_S = 0.5
_PRUNE_EVERY_S = 10.0


class MqttCommunicator(Communicator):
    """The agent's link to the broker. Construct, ``set_status(...)``, ``start()``, publish, ``stop()``."""

    def __init__(self, config: MqttConfig, device_id: str, *, state_dir: str | Path | None = None,
                 outbox_path: str | Path | None = None, status: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None):
        try:
            validate_device_id(device_id)
        except ValueError as exc:
            raise TopicError(str(exc)) from None
        self.config = config
        self.device_id = device_id
        self.topics = Topics(config.topic_prefix, device_id)
        self.detections_qos = config.detections_qos
        self.v5 = config.protocol == "5"
        self.health_expiry_s = config.health_expiry_s if self.v5 else None
        password = resolve_password(config, dict(environ) if environ is not None else None)
        path = Path(outbox_path) if outbox_path is not None else config.outbox.resolve_path(
            Path(state_dir) if state_dir is not None else default_state_dir())
        self.outbox = Outbox.from_config(config.outbox, path)
        self._inflight_max = config.outbox.inflight
        self._status_fields: dict[str, Any] = dict(status or {})
        self._lock = threading.Lock()
        self._drained = threading.Condition()
        self._wake = threading.Event()
        self._announce_online = threading.Event()
        self._acks: queue.SimpleQueue[tuple[int, str | None]] = queue.SimpleQueue()
        self._dispatcher = CommandDispatcher(self._respond)
        self._inflight: dict[int, OutboxEntry] = {}  # mid -> row; touched by the sender thread only
        self._cursor = 0  # highest row id handed to paho
        self._connected = False
        self._ever_connected = False
        self._started = False
        self._stopping = False
        self._link_state = "stopped"
        self._last_error: str | None = None
        self._counts = {"reconnects": 0, "published": 0, "acked": 0, "rejected": 0, "skipped_offline": 0,
                        "commands": 0}
        self._threads: list[threading.Thread] = []
        try:
            self._client = self._make_client(password)
        except BaseException:
            self.outbox.close()
            raise

    # -- setup ---------------------------------------------------------------------------
    def _make_client(self, password: str | None) -> paho.Client:
        client = make_paho_client(self.config, self.device_id, password, self._inflight_max, self.v5)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _status_payload(self, state: str) -> dict[str, Any]:
        return {"state": state, **self._status_fields}

    def _set_will(self) -> None:
        """The broker publishes this ``offline`` status if we vanish without a DISCONNECT.

        It is registered before the connection exists, so it cannot have a place in the status
        sequence: it carries ``seq`` 0, and ``ts`` is when it was registered.
        """
        now = time.time()
        body = envelope.wrap(self._status_payload("offline"), device_id=self.device_id, seq=0, ts=now, sent_ts=now)
        props = None
        if self.v5:
            props = Properties(PacketTypes.WILLMESSAGE)
            props.ContentType = JSON
        self._client.will_set(self.topics.status, envelope.encode(body), qos=1, retain=True, properties=props)

    def set_status(self, **fields: Any) -> None:
        """Fields sent with every status (model name/version...); the will picks them up at the next connect."""
        clash = {"state", *envelope.ENVELOPE_FIELDS} & set(fields)
        if clash:
            raise EnvelopeError(f"status field(s) {', '.join(sorted(clash))} are reserved; rename them")
        envelope.encode(fields)  # fail here, not in the network thread
        with self._lock:
            self._status_fields.update(fields)
        if self._started and not self._stopping:
            self._set_will()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise MqttSetupError("the MQTT communicator is already started")
        self._started = True
        self._link_state = "connecting"
        self._set_will()
        self._threads = [threading.Thread(target=self._sender_loop, name="mqtt-outbox", daemon=True)]
        for t in self._threads:
            t.start()
        self._dispatcher.start()
        kwargs: dict[str, Any] = {"clean_start": True} if self.v5 else {}
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive, **kwargs)
        self._client.loop_start()
        log.info("MQTT: connecting to %s as %s (MQTT %s), outbox %s holds %d message(s)", self.config.url,
                 self.config.resolved_client_id(self.device_id), self.config.protocol, self.outbox.path,
                 len(self.outbox))

    def stop(self, flush_timeout: float = 10.0) -> bool:
        if not self._started:
            self.outbox.close()
            return len(self.outbox) == 0
        if self._stopping:
            return False
        flushed = self.flush(flush_timeout)
        if self._connected:
            info = self._publish_now(topics.STATUS, self._status_payload("stopped"), qos=1, retain=True)
            if info is not None:
                try:
                    info.wait_for_publish(timeout=min(5.0, max(flush_timeout, 1.0)))
                except (RuntimeError, ValueError):
                    pass
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._wake.set()
        self._dispatcher.stop()
        for t in self._threads:
            t.join(timeout=10.0)
        left = len(self.outbox)
        self.outbox.close()
        self._connected = False
        self._link_state = "stopped"
        if left:
            log.warning("MQTT: stopped with %d message(s) still queued; they are sent at the next start", left)
        return flushed and left == 0

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        self._wake.set()
        with self._drained:
            while len(self.outbox) > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._drained.wait(timeout=min(left, _SENDER_TICK_S))
        return True

    @property
    def is_connected(self) -> bool:
        return self._connected

    # -- paho callbacks (network thread: record and hand off only) -----------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        if reason_code.is_failure:
            msg = f"broker refused the connection: {reason_code}"
            if msg != self._last_error:
                log.warning("MQTT: %s (check username/password/client certificate)", msg)
            self._last_error = msg
            self._link_state = "disconnected"
            return
        if self._ever_connected:
            self._count("reconnects")
        self._ever_connected = True
        self._connected = True
        self._link_state = "connected"
        self._last_error = None
        log.info("MQTT: connected to %s", self.config.url)
        if self.v5:
            client.subscribe(self.topics.cmd_filter, options=SubscribeOptions(qos=1, noLocal=True))
        else:
            client.subscribe(self.topics.cmd_filter, qos=1)
        # The retained "online" needs a seq from the outbox database (a write + fsync): the sender
        # thread publishes it, never paho's network thread.
        self._announce_online.set()
        self._wake.set()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        msg = f"cannot reach the broker at {self.config.host}:{self.config.port}"
        if self.config.tls_enabled:
            msg += (" (or the TLS handshake failed: check tls.ca_file, the client certificate and the broker's "
                    "host name)")
        if msg != self._last_error:
            log.warning("MQTT: %s; retrying with backoff up to %ds", msg, self.config.reconnect_max_s)
        self._last_error = msg

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        was = self._connected
        self._connected = False
        if self._stopping:
            return
        self._link_state = "disconnected"
        if was:
            self._last_error = f"link lost: {reason_code}"
            log.warning("MQTT: disconnected (%s); %d message(s) queued, reconnecting", reason_code,
                        len(self.outbox))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        self._acks.put((mid, str(reason_code) if reason_code.is_failure else None))
        self._wake.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        name = self.topics.command_name(msg.topic)
        if name is None:
            return
        if msg.retain:
            log.warning("MQTT: ignored retained command %s (a retained command would re-run at every connect; "
                        "clear it by publishing an empty retained message)", msg.topic)
            return
        self._count("commands")
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties is not None else None
        self._dispatcher.submit(Command(name=name, args={}, topic=msg.topic, correlation_data=corr,
                                        raw=bytes(msg.payload)))

    # -- publishing ----------------------------------------------------------------------
    def _properties(self, content_type: str | None, expiry_s: int | None,
                    user: tuple[tuple[str, str], ...] | list[tuple[str, str]] | None) -> Properties | None:
        return publish_properties(self.v5, content_type, expiry_s, user)

    def publish(self, topic_suffix: str, payload: Mapping[str, Any] | bytes, *, qos: int = 0, retain: bool = False,
                persistent: bool = False, ts: float | datetime | None = None,
                expiry_s: int | None = None) -> bool:
        return self._publish(topic_suffix, payload, qos=qos, retain=retain, persistent=persistent, ts=ts,
                             expiry_s=expiry_s)

    def _publish(self, suffix: str, payload: Mapping[str, Any] | bytes, *, qos: int, retain: bool,
                 persistent: bool, ts: float | datetime | None, expiry_s: int | None,
                 meta: Mapping[str, Any] | None = None, content_type: str | None = None) -> bool:
        topic = self.topics.topic(suffix)
        if qos not in (0, 1, 2):
            raise ValueError(f"qos {qos!r} must be 0, 1 or 2")
        if self._stopping:
            return False
        if not persistent:
            if not self._connected:
                self._count("skipped_offline")
                return False
            info = self._publish_now(suffix, payload, qos=qos, retain=retain, ts=ts, expiry_s=expiry_s, meta=meta,
                                     content_type=content_type)
            return info is not None and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
        sent = time.time()
        when = ts if ts is not None else sent
        msg_id = envelope.new_msg_id()
        raw = isinstance(payload, (bytes, bytearray, memoryview))
        props: dict[str, Any] = {"content_type": (content_type or envelope.RAW_CONTENT_TYPE) if raw else JSON,
                                 "expiry_s": expiry_s}
        if raw:  # the user properties carry the seq, so they are rebuilt at send time from these
            props.update(ts=envelope.iso_utc(when), sent_ts=envelope.iso_utc(sent), meta=dict(meta or {}), raw=True)

        def build(seq: int) -> bytes:
            return envelope.encode_message(payload, device_id=self.device_id, seq=seq, msg_id=msg_id, ts=when,
                                           sent_ts=sent, extra=meta).data

        entry = self.outbox.add(suffix, topic, build, qos=qos, retain=retain, props=props, msg_id=msg_id)
        self._wake.set()
        return entry is not None

    def _publish_now(self, suffix: str, payload: Mapping[str, Any] | bytes, *, qos: int, retain: bool,
                     ts: float | datetime | None = None, expiry_s: int | None = None,
                     meta: Mapping[str, Any] | None = None, content_type: str | None = None,
                     correlation_data: bytes | None = None) -> paho.MQTTMessageInfo | None:
        """Publish without the outbox (status, health, snapshots, responses): numbered, not stored."""
        topic = self.topics.topic(suffix)
        sent = time.time()
        seq = self.outbox.next_seq(suffix)
        encoded = envelope.encode_message(payload, device_id=self.device_id, seq=seq, msg_id=envelope.new_msg_id(),
                                          ts=ts if ts is not None else sent, sent_ts=sent, content_type=content_type,
                                          extra=meta)
        data = encoded.data
        props = self._properties(encoded.content_type, expiry_s, encoded.user_properties)
        if correlation_data is not None and props is not None:
            props.CorrelationData = correlation_data
        info = self._client.publish(topic, data, qos=qos, retain=retain, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._count("skipped_offline")
        return info

    def publish_snapshot(self, jpeg: bytes, ts: float | datetime, **fields: Any) -> bool:
        fmt = self.config.snapshot_format
        if fmt == "auto":
            fmt = "jpeg" if self.v5 else "base64"
        if fmt == "jpeg":
            return self._publish(topics.SNAPSHOTS, bytes(jpeg), qos=0, retain=False, persistent=False, ts=ts,
                                 expiry_s=None, meta=fields, content_type="image/jpeg")
        return self.publish(topics.SNAPSHOTS, {**envelope.jpeg_b64_fields(jpeg), **fields}, qos=0, ts=ts)

    # -- outbox sender ---------------------------------------------------------------------
    def _sender_loop(self) -> None:
        last_prune = time.monotonic()
        while True:
            self._wake.wait(timeout=_SENDER_TICK_S)
            self._wake.clear()
            try:
                self._drain_acks()
                if self._stopping:
                    return
                if time.monotonic() - last_prune > _PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    if self.outbox.prune():
                        self._notify_drained()
                if self._connected and self._announce_online.is_set():
                    self._announce_online.clear()
                    self._publish_now(topics.STATUS, self._status_payload("online"), qos=1, retain=True)
                if self._connected:
                    self._fill_window()
            except Exception:  # a sender that dies silently would queue forever; log and keep going
                if self._stopping or self.outbox.closed:
                    return
                log.exception("MQTT: outbox sender error (retrying)")
                time.sleep(1.0)

    def _fill_window(self) -> None:
        room = self._inflight_max - len(self._inflight)
        if room <= 0:
            return
        for entry in self.outbox.peek(after_id=self._cursor, limit=room):
            if not self._connected:
                return
            info = self._client.publish(entry.topic, entry.payload, qos=entry.qos, retain=entry.retain,
                                        properties=self._entry_properties(entry))
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                return  # paho is full; retry after acks free room
            self._cursor = entry.id
            self._count("published")
            self._inflight[info.mid] = entry

    def _entry_properties(self, entry: OutboxEntry) -> Properties | None:
        p = entry.props or {}
        user = None
        if p.get("raw"):
            user = envelope.raw_envelope_properties(device_id=self.device_id, seq=entry.seq, msg_id=entry.msg_id or "",
                                                    ts=p["ts"], sent_ts=p["sent_ts"], extra=p.get("meta"))
        return self._properties(p.get("content_type"), p.get("expiry_s"), user)

    def _drain_acks(self) -> None:
        done: list[int] = []
        while True:
            try:
                mid, failure = self._acks.get_nowait()
            except queue.Empty:
                break
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue  # a status/health/response message
            if failure:
                self._count("rejected")
                log.warning("MQTT: broker refused %s seq %d (%s); dropped (check the broker ACL)", entry.topic,
                            entry.seq, failure)
            done.append(entry.id)
        if done:
            self._count("acked", self.outbox.ack(done))
            self._notify_drained()

    def _notify_drained(self) -> None:
        with self._drained:
            self._drained.notify_all()

    # -- commands ------------------------------------------------------------------------
    def subscribe_commands(self, handler: CommandHandler) -> None:
        self._dispatcher.handler = handler

    def _respond(self, cmd: Command, response: dict[str, Any]) -> None:
        """Answer one command on cmd/response (skipped, and counted, while offline)."""
        if not self._connected or self._stopping:
            self._count("skipped_offline")
            return
        try:
            self._publish_now(topics.CMD_RESPONSE, response, qos=1, retain=False,
                              correlation_data=cmd.correlation_data)
        except EnvelopeError as exc:
            self._publish_now(topics.CMD_RESPONSE, {"command": cmd.name, "request_id": response.get("request_id"),
                                                    "ok": False, "error": f"result is not JSON: {exc}"},
                              qos=1, retain=False, correlation_data=cmd.correlation_data)

    # -- numbers -------------------------------------------------------------------------
    def _count(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by

    def stats(self) -> CommsStats:
        corrupt = lost_files = 0
        if self.outbox.closed:
            depth, size, age, dropped = 0, 0, None, 0
        else:
            s = self.outbox.stats()
            depth, size, age, dropped = s.depth, s.bytes, s.oldest_age_s, s.dropped
            corrupt, lost_files = s.corrupt, s.lost_files
        with self._lock:
            c = dict(self._counts)
        return CommsStats(connected=self._connected, link_state=self._link_state, reconnects=c["reconnects"],
                          last_error=self._last_error, outbox_depth=depth, outbox_bytes=size,
                          outbox_oldest_age_s=age, dropped=dropped, published=c["published"], acked=c["acked"],
                          rejected=c["rejected"], inflight=len(self._inflight), skipped_offline=c["skipped_offline"],
                          commands=c["commands"], outbox_writable=not self.outbox.closed, outbox_corrupt=corrupt,
                          outbox_lost_files=lost_files)
