"""sd_notify and the frame-fed watchdog, through a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from edge_agent.service.notify import Notifier
from edge_agent.service.watchdog import FrameWatchdog
from tests.helpers import wait_until


class FakeManager:
    """Binds the NOTIFY_SOCKET like systemd does and records every datagram."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = b"\0" + path[1:].encode() if path.startswith("@") else path
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        return [m for _, m in self.messages]

    def wait_for(self, predicate, timeout: float = 3.0) -> bool:
        """Until ``predicate(texts)`` holds; AssertionError with the datagrams so far otherwise."""
        wait_until(lambda: predicate(self.texts()), timeout, lambda: f"matching datagrams; got {self.texts()[-10:]}")
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path):
    m = FakeManager(str(tmp_path / "notify.sock"))
    yield m
    m.close()


def test_ready_status_stopping_arrive_in_order(manager: FakeManager):
    n = Notifier(environ={"NOTIFY_SOCKET": manager.path})
    assert n.enabled
    assert n.ready("model reference 1.0 loaded")
    assert n.status("12.5 fps\nsecond line")
    assert n.stopping()
    assert manager.wait_for(lambda t: len(t) == 3)
    ready, status, stopping = manager.texts()
    assert ready.splitlines() == ["READY=1", "STATUS=model reference 1.0 loaded"]
    assert status == "STATUS=12.5 fps second line"  # one line: a newline would start a bogus field
    assert stopping == "STOPPING=1"


def test_abstract_namespace_socket(tmp_path: Path):
    m = FakeManager(f"@crackseg-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        assert Notifier(environ={"NOTIFY_SOCKET": m.path}).watchdog()
        assert m.wait_for(lambda t: t == ["WATCHDOG=1"])
    finally:
        m.close()


def test_without_notify_socket_everything_is_a_noop():
    n = Notifier(environ={})
    assert not n.enabled
    assert n.ready() is False and n.status("x") is False and n.watchdog() is False
    assert FrameWatchdog(n).start() is False


def test_unreachable_socket_does_not_raise(tmp_path: Path):
    n = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert n.status("still surveying") is False  # logged once, never raised


def test_watchdog_interval_is_half_of_watchdog_usec(manager: FakeManager):
    env = {"NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert FrameWatchdog(Notifier(environ=env)).interval_s == pytest.approx(1.5)
    # WATCHDOG_PID of another process: the watchdog is not ours
    env["WATCHDOG_PID"] = str(os.getpid() + 1)
    wd = FrameWatchdog(Notifier(environ=env))
    assert wd.interval_s is None and wd.start() is False


def counting_ticks(wd: FrameWatchdog) -> list[bool]:
    """Records each watchdog tick's outcome (True: pinged), so a test can wait for ticks, not for time."""
    ticks: list[bool] = []
    tick = wd.check_and_ping

    def counted() -> bool:
        pinged = tick()
        ticks.append(pinged)
        return pinged

    wd.check_and_ping = counted  # type: ignore[method-assign]
    return ticks


def test_pings_only_while_frames_are_processed(manager: FakeManager):
    wd = FrameWatchdog(Notifier(environ={"NOTIFY_SOCKET": manager.path}), interval_s=0.05)
    ticks = counting_ticks(wd)
    assert wd.start()
    try:
        wait_until(lambda: len(ticks) >= 6, what="6 watchdog ticks")  # loaded but no frame yet: no ping
        assert not any(ticks) and wd.pings == 0
        assert "WATCHDOG=1" not in manager.texts()
        assert wd.heartbeat_age_s() is None

        stop_frames = threading.Event()

        def pipeline():
            while not stop_frames.is_set():
                wd.heartbeat()
                time.sleep(0.01)

        t = threading.Thread(target=pipeline, daemon=True)
        t.start()
        assert manager.wait_for(lambda m: m.count("WATCHDOG=1") >= 4)
        stop_frames.set()
        t.join()
        # the tick under way and the next may still see the last frame; none after them may ping
        first = len(ticks) + 2
        wait_until(lambda: len(ticks) >= first + 9, what="9 more watchdog ticks")
        assert not any(ticks[first:])
        pings = wd.pings
        wait_until(lambda: manager.texts().count("WATCHDOG=1") == pings, what="every ping to arrive")
        assert wd.heartbeat_age_s() is not None and wd.heartbeat_age_s() >= 0.4  # 9 intervals since the frame
    finally:
        wd.stop()


def test_check_and_ping_is_per_tick(manager: FakeManager):
    wd = FrameWatchdog(Notifier(environ={"NOTIFY_SOCKET": manager.path}), interval_s=10)
    assert wd.check_and_ping() is False
    wd.heartbeat()
    assert wd.check_and_ping() is True
    assert wd.check_and_ping() is False  # the same frame does not buy a second ping
    assert manager.wait_for(lambda m: m == ["WATCHDOG=1"])
    assert wd.pings == 1
