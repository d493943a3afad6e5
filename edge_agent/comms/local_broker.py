"""A private Mosquitto on a free loopback port, for the demo and the benchmarks.

Vehicles talk to the fleet's broker; this exists so ``crackseg-edge demo`` and ``bench``
run on a machine with nothing configured, without touching a system broker.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edge_agent.errors import UserError


class BrokerUnavailableError(UserError, RuntimeError):
    """Mosquitto is not installed or would not start."""


def find_mosquitto() -> str:
    path = os.environ.get("MOSQUITTO_BIN") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(path, os.X_OK):
        raise BrokerUnavailableError("mosquitto is not installed: run ./run.sh setup, or apt-get install mosquitto")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """``with LocalBroker() as b: ... b.url`` -- anonymous, in-memory, loopback only."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="crackseg-broker-"))
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> LocalBroker:
        conf = self._dir / "mosquitto.conf"
        # max_queued_messages: the outbox benchmark pushes thousands of QoS 1 messages at once
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "max_queued_messages 100000\n"
                        f"log_dest file {self._dir / 'mosquitto.log'}\n")
        self._proc = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerUnavailableError(f"mosquitto exited at start (code {self._proc.returncode}); see "
                                             f"{self._dir / 'mosquitto.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerUnavailableError(f"mosquitto did not listen on port {self.port} within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
