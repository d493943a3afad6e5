"""The private-Mosquitto launcher (``edge_agent.demo.broker``) that the demo, the benchmarks and the tests
share: reserved ports, a retry when the chosen port is taken anyway, restarts on the same port."""

from __future__ import annotations

import socket

import pytest

from edge_agent.demo.broker import BrokerUnavailableError, LocalBroker, PortReservation, mosquitto_path
from edge_agent.errors import UserError

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed")


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def mqtt_connect(url: str) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.config.mqtt import parse_broker_url

    _, host, port = parse_broker_url(url)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="launcher-test")
    assert client.connect(host, port, keepalive=5) == 0
    client.disconnect()


def test_a_reservation_refuses_connections_and_keeps_the_port():
    with PortReservation() as held:
        assert refused(held.port)
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", held.port))  # a plain bind of the held port fails
        others = []
        for _ in range(200):  # and the kernel hands it to no one asking for a free port
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            others.append(s)
        try:
            assert held.port not in {s.getsockname()[1] for s in others}
        finally:
            for s in others:
                s.close()
    assert not held.held


def test_temporary_broker_starts_serves_and_cleans_up():
    with LocalBroker() as broker:
        assert broker.running and broker.url == f"mqtt://127.0.0.1:{broker.port}"
        mqtt_connect(broker.url)
        folder = broker.dir
        assert "persistence false" in broker.config_path.read_text()
    assert not broker.running and not folder.exists()
    assert refused(broker.port)


def test_restart_keeps_the_port_and_refuses_connections_while_down(tmp_path):
    broker = LocalBroker(tmp_path / "b", persistence=True).start()
    try:
        port = broker.port
        broker.stop(kill=True)
        assert refused(port)
        with socket.socket() as intruder, pytest.raises(OSError):
            intruder.bind(("127.0.0.1", port))  # held while down: a restart gets it back
        broker.start()
        assert broker.port == port
        mqtt_connect(broker.url)
    finally:
        broker.close()


def test_first_start_moves_to_a_new_port_when_the_chosen_one_was_taken(tmp_path):
    broker = LocalBroker(tmp_path / "b")
    chosen = broker.port
    # a program that binds that very port number (SO_REUSEADDR, as servers do) and listens on it
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", chosen))
    squatter.listen()
    try:
        broker.start()
        assert broker.port != chosen
        assert "Address already in use" in broker.log_text()  # the first try failed and said why
        mqtt_connect(broker.url)
    finally:
        squatter.close()
        broker.close()


def test_a_port_given_by_the_caller_never_moves(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = LocalBroker(tmp_path / "b", port=port)
        with pytest.raises(BrokerUnavailableError, match=f"(?s)port {port}.*Address already in use"):
            broker.start()
        assert broker.port == port and not broker.running
        broker.close()


def test_missing_mosquitto_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSQUITTO_BIN", str(tmp_path / "no-mosquitto"))
    monkeypatch.setenv("PATH", str(tmp_path))
    broker = LocalBroker(tmp_path / "b")
    with pytest.raises(UserError, match="mosquitto is not installed"):
        broker.start()
    broker.close()


def test_the_demo_command_still_imports():
    from edge_agent.demo import run_demo

    assert callable(run_demo)
