"""Which thread does what in the MQTT communicator, and what it logs on the way.

paho calls its callbacks on its network thread; anything slow there (an SQLite write with
fsync) delays keepalives and PUBACKs. These tests pin that the network thread never touches
the outbox database, and that an unreachable broker or a clean stop leaves one clear log line
per real problem instead of a stream of paho errors.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from edge_agent.comms.mqtt import MqttCommunicator
from edge_agent.config.mqtt import MqttConfig
from tests.mosquitto import free_port


def _communicator(url: str, tmp_path: Path) -> MqttCommunicator:
    return MqttCommunicator(MqttConfig(url=url, reconnect_min_s=1, reconnect_max_s=1), "van-1",
                            outbox_path=tmp_path / "outbox.db")


def test_network_thread_never_writes_the_outbox_database(mosquitto, subscriber, tmp_path: Path) -> None:
    sub = subscriber(mosquitto.url, "crackseg/van-1/status")
    comm = _communicator(mosquitto.url, tmp_path)
    writers: list[str] = []
    original = comm.outbox.next_seq

    def recording_next_seq(stream: str) -> int:
        writers.append(threading.current_thread().name)
        return original(stream)

    comm.outbox.next_seq = recording_next_seq  # type: ignore[method-assign]
    comm.start()
    try:
        sub.wait_for(1, topic="crackseg/van-1/status", predicate=lambda m: m.json()["state"] == "online")
    finally:
        comm.stop(flush_timeout=1)
    assert writers, "the online status was published without a sequence number"
    assert not [name for name in writers if name.startswith("paho")], writers


def test_unreachable_broker_and_clean_stop_log_no_paho_errors(tmp_path: Path, caplog) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    comm = _communicator(url, tmp_path)
    attempts = threading.Event()
    real_fail = comm._on_connect_fail
    failures = []

    def counting_fail(client, userdata) -> None:  # noqa: ANN001 - paho's signature
        real_fail(client, userdata)
        failures.append(1)
        if len(failures) >= 2:
            attempts.set()

    comm._client.on_connect_fail = counting_fail
    with caplog.at_level(logging.DEBUG):
        comm.start()
        assert attempts.wait(15), "paho did not retry the connection"
        comm.stop(flush_timeout=0)
    paho_errors = [r for r in caplog.records if r.name == "paho" and r.levelno >= logging.ERROR]
    assert paho_errors == []
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("edge_agent") and
                r.levelno == logging.WARNING and "cannot reach the broker" in r.getMessage()]
    assert len(warnings) == 1, warnings  # one line per real problem, not one per attempt
