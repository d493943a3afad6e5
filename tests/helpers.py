"""Small helpers shared by the tests: waiting for a condition, ports that stay ours, what listens, and
where a thread is blocked.

Tests wait for conditions, never for time: ``wait_until`` polls a predicate and fails with what it
was waiting for and the last value it saw. Ports come from ``PortReservation`` (see
``edge_agent.demo.broker``) or from binding port 0 and reading it back, never from "a port that was
free a moment ago".
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from edge_agent.demo.broker import PortReservation

__all__ = ["PortReservation", "connection_refused", "listening_ports", "thread_stack", "wait_until"]

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str | Callable[[], str] | None = None, *,
               interval: float = 0.02) -> T:
    """Call ``predicate`` until it returns something truthy and return that; AssertionError after ``timeout`` s.

    The error names ``what`` (a string, or a callable evaluated at the failure, to show the state then;
    default: the predicate's name) and the last value returned, so a failing test says what never happened.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    name = what() if callable(what) else what or getattr(predicate, "__qualname__", repr(predicate))
    raise AssertionError(f"timed out after {timeout:g} s waiting for {name} (last value: {value!r})")


def listening_ports(pid: int | None = None) -> set[int]:
    """The TCP ports process ``pid`` (default: this one) listens on."""
    import psutil

    proc = psutil.Process(pid)
    conns = proc.net_connections("tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}


def connection_refused(port: int, host: str = "127.0.0.1") -> bool:
    """True when a TCP connect to ``host:port`` is refused (nothing listens); False when it connects."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def thread_stack(thread: threading.Thread) -> list[str]:
    """The function names on ``thread``'s Python stack, innermost first ([] when it is not running).

    A thread blocked in a C call (a lock, a socket or FFmpeg read) shows the Python function that made
    the call innermost: ``thread_stack(t)[:2] == ["wait", "put"]`` is a thread waiting inside ``put``.
    """
    frame = sys._current_frames().get(thread.ident) if thread.ident is not None else None
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names
