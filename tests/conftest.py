"""Shared fixtures: a real Mosquitto broker per test and an MQTT subscriber that records messages."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mosquitto import MISSING_MESSAGE, MosquittoBroker, mosquitto_available


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    user_properties: dict[str, str]
    content_type: str | None
    expiry_s: int | None = None
    correlation_data: bytes | None = None

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client that records every message it gets, for assertions.

    MQTT 5 by default (to see properties). ``durable=True`` makes it an MQTT 3.1.1 client with
    ``clean_session=False``, so messages the broker accepts while this client is reconnecting
    after a broker restart are still delivered: the broker needs ``persistence`` (and, after a
    SIGKILL, a save: ``MosquittoBroker.wait_saved``). Mosquitto 2.0 does not bring MQTT 5
    session-expiry sessions back from its persistence file, 3.1.1 sessions it does.
    """

    def __init__(self, url: str, topics: list[str], *, ca_file: str | Path | None = None,
                 username: str | None = None, password: str | None = None, client_id: str | None = None,
                 client_cert: tuple[str | Path, str | Path] | None = None, durable: bool = False):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        from edge_agent.config.mqtt import parse_broker_url

        scheme, host, port = parse_broker_url(url)
        self.topics = topics
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self.subscribed = threading.Event()
        client_id = client_id or f"test-sub-{time.monotonic_ns()}"
        if durable:
            self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=MQTTProtocolVersion.MQTTv311, clean_session=False)
        else:
            self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=MQTTProtocolVersion.MQTTv5)
        self.client.reconnect_delay_set(1, 1)
        if scheme == "mqtts":
            self.client.tls_set(ca_certs=str(ca_file) if ca_file else None,
                                certfile=str(client_cert[0]) if client_cert else None,
                                keyfile=str(client_cert[1]) if client_cert else None)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise AssertionError(f"test subscriber could not subscribe to {topics} on {url}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        props = msg.properties
        user = dict(getattr(props, "UserProperty", []) or []) if props is not None else {}
        ctype = getattr(props, "ContentType", None) if props is not None else None
        expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), user, ctype, expiry, corr))
            self._cond.notify_all()

    def matching(self, predicate: Callable[[Received], bool] | None = None, topic: str | None = None) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if (topic is None or m.topic == topic)
                    and (predicate is None or predicate(m))]

    def wait_for(self, n: int, timeout: float = 10.0, *, topic: str | None = None,
                 predicate: Callable[[Received], bool] | None = None) -> list[Received]:
        """At least ``n`` matching messages within ``timeout`` s, else AssertionError with what arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if (topic is None or m.topic == topic)
                         and (predicate is None or predicate(m))]
                left = deadline - time.monotonic()
                if len(found) >= n or left <= 0:
                    break
                self._cond.wait(timeout=min(left, 0.2))
        if len(found) < n:
            raise AssertionError(f"got {len(found)} of {n} messages (topic={topic}) in {timeout}s; all topics seen: "
                                 f"{sorted({m.topic for m in self.messages})}")
        return found

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Factory for brokers with options (persistence, users, tls, acl); all are killed at teardown.

    ``start=False`` gives a broker that is not running yet: its port is reserved (connections are
    refused, nobody else can take it), so clients can be pointed at ``broker.url`` before ``start()``.
    """
    if not mosquitto_available():
        pytest.skip(MISSING_MESSAGE)
    brokers: list[MosquittoBroker] = []

    def factory(*, start: bool = True, **kwargs: Any) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"broker{len(brokers)}", **kwargs)
        brokers.append(broker)
        return broker.start() if start else broker

    yield factory
    for broker in brokers:
        broker.close()


@pytest.fixture
def mosquitto(make_broker: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A plain anonymous broker on a free loopback port, with persistence (for restart tests)."""
    return make_broker(persistence=True)


@pytest.fixture
def subscriber() -> Iterator[Callable[..., Subscriber]]:
    """Factory: ``subscriber(url, "crackseg/#", ...)`` -> a connected recording Subscriber."""
    subs: list[Subscriber] = []

    def factory(url: str, *topics: str, **kwargs: Any) -> Subscriber:
        sub = Subscriber(url, list(topics) or ["#"], **kwargs)
        subs.append(sub)
        return sub

    yield factory
    for sub in subs:
        sub.close()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """A real (tiny, untrained) crack network exported to ONNX with its contract: fast enough for CI."""
    from tests.tiny_models import export_onnx, tiny_torch_model

    return export_onnx(tiny_torch_model(), tmp_path_factory.mktemp("model") / "tiny.onnx", None, threshold=0.5)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An Ed25519 signing key and its public.pem (tests.bundles.make_keys), one pair per test module."""
    from tests.bundles import make_keys

    return make_keys(tmp_path_factory.mktemp("keys"))
