"""``crackseg-office serve``: a small threaded HTTP server for the page and its JSON API.

Why the standard library's ``ThreadingHTTPServer`` and not a framework: the page needs GET on
a dozen fixed paths, static files and JSON; a framework would add a dependency to every office
install for no behaviour we use. What a framework would otherwise give is done here: a thread
per connection with a cap (``MAX_CONCURRENT``; a new connection waits up to ``QUEUE_WAIT_S``
for a free slot, then gets a 503), socket timeouts (a slow or
idle client cannot hold a thread for long), a bounded request line, read-only methods only
(GET/HEAD; anything else 405), security headers (a Content-Security-Policy that allows only
this server, plus the tile server when one is set) and, when bound to a loopback address, a
Host check so that a web page elsewhere cannot reach this one through DNS rebinding.

No authentication: on 127.0.0.1 (the default) only this machine reaches it; on another
address put it behind a reverse proxy that authenticates (docs/office.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import mimetypes
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import event, exc

from office import __version__
from office.store.database import Database, first_line
from office.web.api import Api, Response, Settings, error

log = logging.getLogger(__name__)

MAX_CONCURRENT = 64
SOCKET_TIMEOUT_S = 10      # also how long an idle keep-alive connection holds its thread
QUEUE_WAIT_S = 5
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".html": "text/html; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
                 ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}


def load_static() -> dict[str, tuple[bytes, str, str]]:
    """Every file under office/web/static, read once: URL path -> (bytes, content type, ETag).

    Only these paths are ever served, so no request path reaches the file system.
    """
    files: dict[str, tuple[bytes, str, str]] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.is_file() and not child.name.startswith("."):
                body = child.read_bytes()
                suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
                ctype = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(child.name)[0] or "application/octet-stream"
                if child.name == "LICENSE":
                    ctype = CONTENT_TYPES[".txt"]
                files[f"/{prefix}{child.name}"] = (body, ctype, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')

    walk(resources.files("office.web") / "static", "")
    files["/"] = files["/index.html"]
    return files


def tile_origin(tile_url: str | None) -> str | None:
    """The CSP source of a tile URL template (``https://{s}.tile.example.org/...`` -> ``https://*.tile.example.org``)."""
    if not tile_url:
        return None
    parts = urlsplit(tile_url.replace("{s}", "a"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"tile URL {tile_url!r} must be http(s)://host/...{{z}}/{{x}}/{{y}}...")
    host = parts.netloc.split("@")[-1]
    if "{s}" in tile_url.split("//", 1)[-1].split("/", 1)[0]:
        host = "*." + host.split(".", 1)[1]
    return f"{parts.scheme}://{host}"


def security_headers(settings: Settings) -> dict[str, str]:
    img = " ".join(x for x in ("'self'", "data:", tile_origin(settings.tile_url)) if x)
    csp = (f"default-src 'none'; script-src 'self'; style-src 'self'; img-src {img}; connect-src 'self'; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer", "Cross-Origin-Resource-Policy": "same-origin"}


class OfficeServer(ThreadingHTTPServer):
    """One thread per connection, at most ``MAX_CONCURRENT`` at once; daemon threads end with the server."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], api: Api, settings: Settings):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        self.api, self.static = api, load_static()
        self.headers_all = security_headers(settings)
        self.loopback_only = _is_loopback(address[0])
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(timeout=QUEUE_WAIT_S):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n"
                                b"Retry-After: 1\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Handler(BaseHTTPRequestHandler):
    server: OfficeServer
    protocol_version = "HTTP/1.1"
    server_version = f"crackseg-office/{__version__}"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_S

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _refuse_method(self) -> None:
        self._send(Response(405, b'{"error":"read-only: GET and HEAD only","status":405}', "application/json",
                            {"Allow": "GET, HEAD"}), head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    def _answer(self, *, head: bool) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if self.server.loopback_only and host not in LOOPBACK_NAMES:
            self._send(error(421, "this server answers only to localhost, 127.0.0.1 or [::1]"), head=head)
            return
        parts = urlsplit(self.path)
        path = parts.path
        try:
            if path.startswith("/api/"):
                resp = self.server.api.handle(path, parts.query)
            else:
                resp = self._static(path)
        except exc.DBAPIError as err:
            log.warning("database error answering %s: %s", path, first_line(err))
            resp = error(503, "database unavailable; try again")
        except Exception:  # noqa: BLE001 - one bad request must not take the server down
            log.exception("error answering %s", path)
            resp = error(500, "internal error (see the server's log)")
        self._send(resp, head=head)

    def _static(self, path: str) -> Response:
        found = self.server.static.get(path)
        if found is None:
            return Response(404, b"not found\n", "text/plain; charset=utf-8")
        body, ctype, etag = found
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if self.headers.get("If-None-Match") == etag:
            return Response(304, b"", ctype, headers)
        return Response(200, body, ctype, headers)

    def _send(self, resp: Response, *, head: bool) -> None:
        self.send_response(resp.status)
        headers = {**self.server.headers_all, "Content-Type": resp.content_type}
        if resp.status != 304:      # a 304 has no body, and its length would be the cached one's
            headers["Content-Length"] = str(len(resp.body))
        if resp.content_type == "application/json":
            headers["Cache-Control"] = "no-store"
        headers.update(resp.headers)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head and resp.status != 304:
            self.wfile.write(resp.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)


def read_only(db: Database) -> None:
    """Make every later connection refuse writes: the page never writes, and a bug must not either."""

    @event.listens_for(db.engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        cur = dbapi_conn.cursor()
        if db.is_postgres:
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        else:
            cur.execute("PRAGMA query_only = ON")
        cur.close()
        if db.is_postgres:
            dbapi_conn.commit()

    db.engine.dispose()   # connections opened before the listener existed are dropped


def make_server(db: Database, host: str, port: int, settings: Settings) -> OfficeServer:
    """Bind (port 0: any free port); the caller runs ``serve_forever``."""
    read_only(db)
    tile_origin(settings.tile_url)   # refuses a malformed URL before anything listens
    return OfficeServer((host, port), Api(db, settings), settings)


def serve(db: Database, host: str, port: int, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = make_server(db, host, port, settings)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"crackseg-office: serving {db.display_url} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
