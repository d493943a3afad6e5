"""Clients that hang up mid-answer (a scraper's timeout, curl ^C) leave no traceback behind."""

from __future__ import annotations

import socket
import struct

from edge_agent.service.http import HealthServer
from tests.test_http import healthy_snapshot


class _Http:
    host, port, enabled = "127.0.0.1", 0, True


def test_aborted_connections_print_no_tracebacks(capfd):
    big = healthy_snapshot()
    big["model_manifest"] = {"padding": "x" * 2_000_000}  # an answer too large to be sent before the reset
    server = HealthServer(_Http(), lambda: big, heartbeat_timeout_s=15, camera_stall_s=5)
    server.start()
    try:
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
                s.sendall(b"GET /model/info HTTP/1.1\r\nHost: x\r\n\r\n")
        with socket.create_connection(("127.0.0.1", server.port)) as s:  # still serving
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.0 200")
    finally:
        server.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "ConnectionResetError" not in err
