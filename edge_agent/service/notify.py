"""sd_notify(3) over ``$NOTIFY_SOCKET`` with the standard library only.

Why not python-systemd / sdnotify: the protocol is one datagram per message on a unix
socket, the agent must also run where libsystemd is absent (containers, dev laptops), and
a Pi install should not need a compiled extension. When ``NOTIFY_SOCKET`` is unset (not
started by systemd, or ``Type=`` is not notify) every call is a cheap no-op returning False.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)


def _socket_address(path: str) -> str | bytes:
    """``@name`` means the Linux abstract namespace (leading NUL byte), as in sd_notify(3)."""
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


class Notifier:
    """Sends READY/STATUS/STOPPING/WATCHDOG messages to the service manager.

    The unit uses ``NotifyAccess=main``, so messages are accepted only from the main
    process: call these from the agent process itself (any thread), never from children.
    """

    def __init__(self, socket_path: str | None = None, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        self.socket_path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET") or None
        self._env = env
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    def notify(self, message: str) -> bool:
        """Send one raw ``KEY=VALUE\\n...`` datagram; True when the manager got it.

        Failures are logged once and swallowed: losing a status line must never stop the
        survey (if READY or WATCHDOG never arrive, systemd itself restarts the service).
        """
        if not self.socket_path:
            return False
        data = message.encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, _socket_address(self.socket_path))
                return True
            except OSError as exc:
                if not self._warned:
                    log.warning("sd_notify to %s failed (%s); further failures are not logged", self.socket_path,
                                exc)
                    self._warned = True
                self._close_locked()
                return False

    def ready(self, status: str | None = None) -> bool:
        """READY=1: model loaded and the first frame processed (ends ``TimeoutStartSec``)."""
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        """STATUS=: the one line ``systemctl status crackseg-edge`` shows."""
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown began (systemd then waits up to ``TimeoutStopSec``)."""
        return self.notify("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def watchdog(self) -> bool:
        """WATCHDOG=1: keep-alive; call only when real work happened (see FrameWatchdog)."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=: ask for more start-up time (a slow first TensorRT engine build)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_timeout_s(self) -> float | None:
        """``WatchdogSec=`` of the unit in seconds, or None when no watchdog applies to this process.

        systemd sets WATCHDOG_USEC and WATCHDOG_PID; the pid check keeps a child process that
        inherited the environment from pinging on the parent's behalf.
        """
        usec = self._env.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = self._env.get("WATCHDOG_PID")
        if pid and pid.strip() != str(os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
            return None
        return value / 1_000_000 if value > 0 else None

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


def _one_line(text: str) -> str:
    """STATUS is one line: a newline would start a new (bogus) assignment in the datagram."""
    return " ".join(str(text).split())[:400]
