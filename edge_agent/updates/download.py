"""Getting a bundle archive onto the device: http/https/file downloads (chunks: see chunks.py).

Downloads and chunked transfers end in the same place,
``<state_dir>/downloads/<sha256>.<tar.gz|tar|zip>``, and only after the size limit, the
announced size and the announced sha256 all held. Data is streamed to a ``.part`` file (a
200 MB bundle never sits in memory) and renamed into place after an fsync, so a file without
``.part`` is always complete.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import ssl
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from edge_agent.updates.durable import fsync_path
from edge_agent.updates.store import UpdateError
from edge_agent.util.files import sha256_file
from edge_agent.util.urls import redact_url

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
BLOCK = 1 << 16
SOCKET_TIMEOUT_S = 30.0
USER_AGENT = "crackseg-edge-updater"
MAX_URL_CHARS = 4096

Progress = Callable[[int, int | None], None]


class DownloadError(UpdateError):
    """A download that was refused or failed; nothing was kept."""


def archive_suffix(path: Path) -> str:
    """``.tar.gz``, ``.zip`` or ``.tar`` from the file's first bytes (URLs often carry no name)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:2] == b"\x1f\x8b":
        return ".tar.gz"
    if head[:4] == b"PK\x03\x04":
        return ".zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return ".tar"
    raise NotAnArchiveError("the file is not a bundle archive (.tar.gz, .tar or .zip); send the archive written by "
                            "'crackseg-convert build --archive'")


def check_sha256(value: object, what: str = "sha256") -> str:
    if not isinstance(value, str) or not SHA256_RE.match(value.lower()):
        raise DownloadError(f"'{what}' must be the 64 hex digits of the archive's sha256 (sha256sum FILE)")
    return value.lower()


def check_url_text(url: object) -> str:
    """A URL that can be logged, redacted and sent on: UTF-8 text without control characters."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise DownloadError(f"'url' must be text of 1 to {MAX_URL_CHARS} characters")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise DownloadError("'url' is not valid Unicode text") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise DownloadError("'url' must not contain control characters")
    return url


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    timeout_s: float
    allowed_schemes: tuple[str, ...] = ("https", "http")
    file_root: Path | None = None  # the only folder file:// URLs may read (updates.file_root)


class NotAnArchiveError(DownloadError):
    """The bytes had the announced sha256 but are no archive: the sender knew them, so this may be said."""


# One answer for every file:// failure past the path check: a sender must not learn whether a file
# exists, how big it is or what its hash is, so missing, unreadable, a link, a FIFO, another size
# and another hash all read the same.
FILE_REFUSED = ("{what}: refused: no readable regular file with the announced sha256 (and size) under "
                "updates.file_root; the device does not say which of these failed")


def confined_parts(root: Path, path_text: str, what: str) -> list[str]:
    """The path of a file:// URL as names below ``root``, judged on the text alone (touches no file).

    Why lexical first: a refusal here tells the sender only what it sent, never what exists.
    """
    if "\x00" in path_text or not path_text.startswith("/"):
        raise DownloadError(f"{what}: file:// URLs must name an absolute path under updates.file_root ({root})")
    names = path_text.split("/")[1:]
    if any(n in ("", ".", "..") for n in names):
        raise DownloadError(f"{what}: the path must not contain '.', '..' or '//' (updates.file_root: {root})")
    base = [n for n in os.path.abspath(root).split("/") if n]
    if names[:len(base)] != base or len(names) <= len(base):
        raise DownloadError(f"{what}: file:// URLs must name a file under updates.file_root ({root})")
    return names[len(base):]


def open_confined(root: Path, names: list[str]) -> int:
    """An fd of the regular file ``root/names...``, following no symlink below ``root``; OSError otherwise.

    Each folder is opened relative to the previous one with O_NOFOLLOW, so neither a link nor a
    link swapped in after a check leads out of ``root``; the file is opened O_NONBLOCK (a FIFO
    must not hang the update) and must be a regular file by ``fstat`` of the open fd.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names[:-1]:
            next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        if not stat.S_ISREG(os.stat(names[-1], dir_fd=fd, follow_symlinks=False).st_mode):
            raise OSError(f"{names[-1]}: not a regular file")  # not even opened: devices, FIFOs, links
        file_fd = os.open(names[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise OSError(f"{names[-1]}: not a regular file")
    os.set_blocking(file_fd, True)
    return file_fd


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a scheme the device allows (no https -> http downgrade, no ftp)."""

    def __init__(self, allowed: tuple[str, ...]):
        self.allowed = tuple(s for s in allowed if s in ("http", "https"))

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() not in self.allowed:
            raise urllib.error.URLError("redirect to a URL scheme this device does not allow")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _network_reason(reason: object) -> str:
    """A category for a failed connection, never the text of a remote party (TLS names, server words)."""
    if isinstance(reason, str) and reason.startswith("redirect"):
        return reason
    if isinstance(reason, ssl.SSLError):
        return "TLS handshake or certificate not accepted"
    if isinstance(reason, socket.gaierror):
        return "host name not found"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    return "network error"


def _http_status(code: int) -> str:
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


class DownloadArea:
    """``<state_dir>/downloads``: complete archives named by their sha256, ``.part`` while arriving."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def find_complete(self, sha256: str) -> Path | None:
        """A complete, intact archive with this sha256 from an earlier download or transfer."""
        if not self.root.is_dir():
            return None
        for p in self.root.glob(f"{sha256}.*"):
            if p.name.endswith(".part") or not p.is_file():
                continue
            if sha256_file(p) == sha256:
                return p
            log.warning("%s does not match its name any more; deleting it", p)
            p.unlink(missing_ok=True)
        return None

    def discard(self, sha256: str) -> None:
        for p in self.root.glob(f"{sha256}.*"):
            p.unlink(missing_ok=True)

    def cleanup_partial(self) -> list[str]:
        """Delete ``.part`` files of downloads a crash interrupted (http downloads restart from zero)."""
        removed = []
        for p in self.root.glob("*.part") if self.root.is_dir() else []:
            p.unlink(missing_ok=True)
            removed.append(p.name)
        return removed

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    def check_space(self, size: int | None, say_size: bool = True) -> None:
        """An archive needs room for itself, its unpacked copy and the installed copy.

        ``say_size=False`` when the size came from the source (a server's Content-Length): the
        answer must not describe what the source holds.
        """
        if size is None:
            return
        need = 3 * size + 16 * 1024**2
        free = self.free_bytes()
        if free < need:
            needed = f", about {need // 2**20} MB needed for a {size // 2**20} MB bundle" if say_size else ""
            raise DownloadError(f"not enough free space in {self.root}: {free // 2**20} MB free{needed}; free space "
                                "or delete old models (crackseg-edge model list)")

    # -- receiving -------------------------------------------------------------------------
    def receive(self, sha256: str, read: Callable[[int], bytes], *, what: str, max_bytes: int,
                size: int | None = None, deadline: float | None = None, timeout_s: float | None = None,
                progress: Progress | None = None) -> Path:
        """Stream ``read`` into ``<sha256>.part``, check size and hash, rename to the final name."""
        self.root.mkdir(parents=True, exist_ok=True)
        part = self.root / f"{sha256}.part"
        h = hashlib.sha256()
        n = 0
        try:
            with open(part, "wb") as f:
                while True:
                    if deadline is not None and time.monotonic() > deadline:
                        raise DownloadError(f"{what}: not complete after {timeout_s:.0f} s "
                                            "(updates.download_timeout_s); try again or raise the limit")
                    block = read(BLOCK)
                    if not block:
                        break
                    n += len(block)
                    if n > max_bytes:
                        raise DownloadError(f"{what}: larger than updates.max_bundle_bytes ({max_bytes} bytes); "
                                            "refused")
                    if size is not None and n > size:
                        raise DownloadError(f"{what}: more than the {size} bytes the command announced; refused")
                    h.update(block)
                    f.write(block)
                    if progress is not None:
                        progress(n, size)
                f.flush()
                os.fsync(f.fileno())
            if size is not None and n != size:  # never say how many bytes came: that would describe the source
                raise DownloadError(f"{what}: truncated: fewer than the {size} bytes announced; send it again")
            if h.hexdigest() != sha256:  # nor which sha256 they had
                raise DownloadError(f"{what}: the sha256 differs from the command's (corrupted, truncated or another "
                                    "file); nothing was installed")
            final = self.root / f"{sha256}{archive_suffix(part)}"
            os.replace(part, final)
            fsync_path(self.root)
            return final
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def fetch(self, url: str, sha256: str, limits: FetchLimits, size: int | None = None,
              progress: Progress | None = None) -> Path:
        """Download ``url`` (http, https or file) unless an intact copy with this sha256 is here already."""
        sha256 = check_sha256(sha256)
        url = check_url_text(url)
        if size is not None and size > limits.max_bytes:
            raise DownloadError(f"the bundle is {size} bytes, over updates.max_bundle_bytes ({limits.max_bytes}); "
                                "refused")
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise DownloadError(f"'url' is not a URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise DownloadError(f"URL scheme '{scheme or '(none)'}' is not supported; use https://, http:// or "
                                "file://")
        if scheme not in limits.allowed_schemes:
            raise DownloadError(f"URL scheme '{scheme}' is not allowed on this device (updates.allowed_url_schemes: "
                                f"{', '.join(limits.allowed_schemes)})")
        existing = self.find_complete(sha256)
        if existing is not None:
            log.info("bundle %s is already downloaded; not fetching %s again", sha256[:12], redact_url(url))
            return existing
        self.check_space(size)
        what = redact_url(url)
        deadline = time.monotonic() + limits.timeout_s
        if scheme == "file":
            return self._fetch_file(parts.netloc, unquote(parts.path), sha256, limits, size, what, deadline)
        if not parts.hostname:
            raise DownloadError(f"{what}: the URL names no host")
        return self._fetch_http(url, sha256, limits, size, what, deadline, progress)

    def _fetch_file(self, netloc: str, path_text: str, sha256: str, limits: FetchLimits, size: int | None,
                    what: str, deadline: float) -> Path:
        if netloc not in ("", "localhost"):
            raise DownloadError(f"{what}: file:// URLs must name a local absolute path (file:///path)")
        if limits.file_root is None:
            raise DownloadError(f"{what}: file:// URLs need updates.file_root, the one folder they may read")
        names = confined_parts(limits.file_root, path_text, what)
        try:
            with os.fdopen(open_confined(limits.file_root, names), "rb") as f:
                return self.receive(sha256, f.read, what=what, max_bytes=limits.max_bytes, size=size,
                                    deadline=deadline, timeout_s=limits.timeout_s)
        except NotAnArchiveError:
            raise
        except (OSError, DownloadError):
            raise DownloadError(FILE_REFUSED.format(what=what)) from None

    def _fetch_http(self, url: str, sha256: str, limits: FetchLimits, size: int | None, what: str,
                    deadline: float, progress: Progress | None) -> Path:
        """http(s): failures say what went wrong in the device's words, never the server's content."""
        timeout = min(SOCKET_TIMEOUT_S, limits.timeout_s)
        opener = urllib.request.build_opener(_SchemeCheckingRedirects(limits.allowed_schemes))
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with opener.open(request, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit():
                    announced = int(length)
                    if announced > limits.max_bytes:
                        raise DownloadError(f"{what}: the server announces more than updates.max_bundle_bytes "
                                            f"({limits.max_bytes} bytes); refused")
                    if size is not None and announced != size:
                        raise DownloadError(f"{what}: the server announces another size than the {size} bytes of "
                                            "the command; refused")
                    self.check_space(announced, say_size=False)
                return self.receive(sha256, resp.read, what=what, max_bytes=limits.max_bytes, size=size,
                                    deadline=deadline, timeout_s=limits.timeout_s, progress=progress)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{what}: {_http_status(exc.code)}") from None
        except urllib.error.URLError as exc:
            raise DownloadError(f"{what}: cannot download ({_network_reason(exc.reason)})") from None
        except TimeoutError:
            raise DownloadError(f"{what}: no data for {timeout:.0f} s; try again later") from None
        except http.client.HTTPException:
            raise DownloadError(f"{what}: the server broke off or sent a malformed response; try again") from None
        except ValueError:  # http.client.InvalidURL, bad IDNA host names
            raise DownloadError(f"{what}: not a valid http(s) URL") from None
        except OSError as exc:
            raise DownloadError(f"{what}: connection failed ({_network_reason(exc)})") from None
