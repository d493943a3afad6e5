"""A private Mosquitto on a loopback port: the one launcher, for ``crackseg-edge demo``, the benchmarks
and the test suite (``tests/mosquitto.py`` adds certificates, users and ACLs on top of it).

Vehicles talk to the fleet's broker; this exists so the demo and the benchmarks run on a machine with
nothing configured, without touching a system broker.

Ports. A port found free can be taken by another process before mosquitto binds it. So the launcher
holds the port it chose with a ``PortReservation``: a socket bound with ``SO_REUSEADDR`` that never
listens. Connections to it are refused (as to a port nobody listens on), the kernel never hands it out
to a ``bind(("", 0))`` and a plain bind of it fails, but mosquitto, which binds with ``SO_REUSEADDR``
too, can bind it and listen. The reservation is held from the choice until mosquitto listens, and
again while a started broker is stopped, so that ``start()`` after ``stop()`` gets the same port.
Should the port be taken all the same (a program that binds that very port number), the first
``start()`` of a broker whose port the caller did not choose retries on a new port; a restart cannot
move (its clients know the port) and fails with mosquitto's log.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable
from pathlib import Path

from edge_agent.errors import UserError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PORT_ATTEMPTS = 5  # first starts on a port that turned out to be taken, each on a new port
ADDRESS_IN_USE = "Address already in use"


class BrokerUnavailableError(UserError, RuntimeError):
    """Mosquitto is not installed or would not start."""


def mosquitto_path() -> str | None:
    """The mosquitto binary (``$MOSQUITTO_BIN``, ``PATH``, ``/usr/sbin/mosquitto``), None if there is none."""
    path = os.environ.get("MOSQUITTO_BIN") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return path if os.access(path, os.X_OK) else None


def find_mosquitto() -> str:
    path = mosquitto_path()
    if path is None:
        raise BrokerUnavailableError("mosquitto is not installed: run ./run.sh setup, or apt-get install mosquitto")
    return path


class PortReservation:
    """Holds a loopback TCP port without listening on it: see the module docstring.

    ``PortReservation()`` takes a free port, ``PortReservation(port=n)`` holds ``n`` (OSError when
    something listens there). A server that binds with ``SO_REUSEADDR`` (mosquitto, Python's
    ``http.server``, gpsd) can take the port over while it is held; ``release()`` once it listens.
    """

    def __init__(self, host: str = HOST, port: int = 0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.host = host
        self.port: int = sock.getsockname()[1]
        self._sock = sock
        self._finalizer = weakref.finalize(self, sock.close)  # no ResourceWarning if never released

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        self._finalizer()

    def __enter__(self) -> PortReservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def free_port() -> int:
    """A port that was free a moment ago. Racy: prefer ``PortReservation``, which keeps it free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` has a TCP socket listening on ``port``; None when the OS will not say."""
    import psutil

    try:
        proc = psutil.Process(pid)
        conns = proc.net_connections("tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return None
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalBroker:
    """One mosquitto process on ``127.0.0.1``: ``with LocalBroker() as b: ... b.url``.

    ``workdir`` holds the config, the log (``mosquitto.log``) and the persistence file; without one a
    temporary folder is made and removed by ``close()`` (or when the broker is garbage collected).
    ``persistence`` saves the broker's state every second and at a clean stop. ``port`` fixes the
    port (the caller keeps it free); without it one is chosen and reserved, and may change at the
    first ``start()`` if it was taken (read ``url`` after starting). ``extra_config``: more
    ``mosquitto.conf`` lines (listener options, password and ACL files).

    ``start()`` / ``stop(kill=False)`` (SIGTERM: state saved; SIGKILL: a crashed broker) /
    ``restart()`` on the same port / ``close()`` (stop and clean up).
    """

    def __init__(self, workdir: str | Path | None = None, *, port: int | None = None, persistence: bool = False,
                 anonymous: bool = True, max_queued_messages: int | None = 100_000,
                 extra_config: Iterable[str] = ()):
        self._cleanup: weakref.finalize | None = None
        if workdir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="crackseg-broker-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.dir, True)
        else:
            self.dir = Path(workdir)
            self.dir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.anonymous = anonymous
        # the outbox benchmark pushes thousands of QoS 1 messages at once; mosquitto's default queue is 1000
        self.max_queued_messages = max_queued_messages
        self.extra_config = [line for line in extra_config if line]
        self.log_path = self.dir / "mosquitto.log"
        self.stderr_path = self.dir / "mosquitto.stderr"
        self.config_path = self.dir / "mosquitto.conf"
        self.persistence_file = self.dir / "mosquitto.db"
        self.proc: subprocess.Popen | None = None
        self._marks = (0, 0)
        self._reservation: PortReservation | None = None
        self._port_movable = port is None
        if port is None:
            self._reservation = PortReservation()
            self.port = self._reservation.port
        else:
            self.port = port
        self._write_config()

    # -- addresses ---------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return HOST

    @property
    def scheme(self) -> str:
        return "mqtt"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- config ------------------------------------------------------------------------------------------
    def config_lines(self) -> list[str]:
        lines = [f"listener {self.port} {HOST}",
                 f"allow_anonymous {'true' if self.anonymous else 'false'}",
                 f"log_dest file {self.log_path}",
                 "log_type error", "log_type warning", "log_type notice", "log_type information",
                 "connection_messages true"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to a user that cannot write self.dir
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if self.max_queued_messages is not None:
            lines.append(f"max_queued_messages {self.max_queued_messages}")
        return lines + self.extra_config

    def _write_config(self) -> Path:
        self.config_path.write_text("\n".join(self.config_lines()) + "\n")
        return self.config_path

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> LocalBroker:
        """Start mosquitto and wait until it listens; BrokerUnavailableError (with its log) if it will not."""
        if self.running:
            return self
        binary = find_mosquitto()
        deadline = time.monotonic() + timeout_s
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self._hold_port()
            self._write_config()
            failure = self._launch(binary, deadline)
            if failure is None:
                self._release_port()
                self._port_movable = False  # clients may know the port from now on
                return self
            if ADDRESS_IN_USE in failure and self._port_movable and attempt < PORT_ATTEMPTS:
                log.info("mosquitto: port %d was taken, retrying on another one", self.port)
                self._release_port()
                self._reservation = PortReservation()
                self.port = self._reservation.port
                continue
            raise BrokerUnavailableError(failure)
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, binary: str, deadline: float) -> str | None:
        """Run mosquitto until it listens on ``self.port`` (None) or fails (what went wrong)."""
        self._marks = (self._size(self.log_path), self._size(self.stderr_path))  # this run's output only
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen([binary, "-c", str(self.config_path)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        while True:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                return (f"mosquitto exited at start with code {code} (port {self.port}): "
                        f"{self.diagnostics()}")
            listening = _listens(self.proc.pid, self.port)
            if listening or (listening is None and _can_connect(self.port)):
                return None
            if time.monotonic() > deadline:
                self.stop(kill=True)
                return f"mosquitto did not listen on port {self.port} in time: {self.diagnostics()}"
            time.sleep(0.02)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (clean: persistence saved) or SIGKILL (a crashed broker). The port stays reserved."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._hold_port()

    def restart(self, kill: bool = False, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds (connections refused), start again on the same port."""
        self.stop(kill=kill)
        if down_s:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop (SIGKILL: nothing to save), give the port back, remove a temporary folder."""
        self.stop(kill=True)
        self._release_port()
        if self._cleanup is not None:
            self._cleanup()

    def _hold_port(self) -> None:
        if self._reservation is not None and self._reservation.held:
            return
        try:
            self._reservation = PortReservation(port=self.port)
        except OSError:
            self._reservation = None  # someone listens there: start() will say so

    def _release_port(self) -> None:
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None

    # -- diagnostics -------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self, chars: int = 2000) -> str:
        """What mosquitto logged and printed since its last start (the end of it), for error messages."""
        parts = []
        for path, mark in zip((self.log_path, self.stderr_path), self._marks):
            try:
                with path.open("rb") as f:
                    f.seek(mark)
                    parts.append(f.read().decode(errors="replace")[-chars:].strip())
            except FileNotFoundError:
                pass
        text = "\n".join(p for p in parts if p)
        return text or f"(nothing logged; see {self.log_path})"

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
