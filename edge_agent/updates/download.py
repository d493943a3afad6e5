"""Getting a bundle archive onto the device: http/https/file downloads (chunks: see chunks.py).

Downloads and chunked transfers end in the same place,
``<state_dir>/downloads/<sha256>.<tar.gz|tar|zip>``, and only after the size limit, the
announced size and the announced sha256 all held. Data is streamed to a ``.part`` file (a
200 MB bundle never sits in memory) and renamed into place after an fsync, so a file without
``.part`` is always complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edge_agent.updates.store import UpdateError, fsync_path
from edge_agent.util.files import sha256_file
from edge_agent.util.urls import redact_url

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
BLOCK = 1 << 16
SOCKET_TIMEOUT_S = 30.0
USER_AGENT = "crackseg-edge-updater"

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
    raise DownloadError("the file is not a bundle archive (.tar.gz, .tar or .zip); send the archive written by "
                        "'crackseg-convert build --archive'")


def check_sha256(value: object, what: str = "sha256") -> str:
    if not isinstance(value, str) or not SHA256_RE.match(value.lower()):
        raise DownloadError(f"'{what}' must be the 64 hex digits of the archive's sha256 (sha256sum FILE)")
    return value.lower()


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    timeout_s: float
    allowed_schemes: tuple[str, ...] = ("https", "http", "file")


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

    def check_space(self, size: int | None) -> None:
        """An archive needs room for itself, its unpacked copy and the installed copy."""
        if size is None:
            return
        need = 3 * size + 16 * 1024**2
        free = self.free_bytes()
        if free < need:
            raise DownloadError(f"not enough free space in {self.root}: {free // 2**20} MB free, about "
                                f"{need // 2**20} MB needed for a {size // 2**20} MB bundle; free space or delete "
                                "old models (crackseg-edge model list)")

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
            if size is not None and n != size:
                raise DownloadError(f"{what}: truncated: got {n} of the {size} bytes announced; send it again")
            digest = h.hexdigest()
            if digest != sha256:
                raise DownloadError(f"{what}: sha256 is {digest}, the command said {sha256} (corrupted, truncated "
                                    "or another file); nothing was installed")
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
            if parts.netloc not in ("", "localhost"):
                raise DownloadError(f"{what}: file:// URLs must name a local absolute path (file:///path)")
            path = Path(unquote(parts.path))
            if not path.is_file():
                raise DownloadError(f"{what}: no such file on the device")
            self.check_space(path.stat().st_size)
            with open(path, "rb") as f:
                return self.receive(sha256, f.read, what=what, max_bytes=limits.max_bytes, size=size,
                                    deadline=deadline, timeout_s=limits.timeout_s, progress=progress)
        if not parts.hostname:
            raise DownloadError(f"{what}: the URL names no host")
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=min(SOCKET_TIMEOUT_S, limits.timeout_s)) as resp:
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit():
                    announced = int(length)
                    if announced > limits.max_bytes:
                        raise DownloadError(f"{what}: {announced} bytes, over updates.max_bundle_bytes "
                                            f"({limits.max_bytes}); refused")
                    if size is not None and announced != size:
                        raise DownloadError(f"{what}: the server sends {announced} bytes, the command said {size}; "
                                            "refused")
                    self.check_space(announced)
                return self.receive(sha256, resp.read, what=what, max_bytes=limits.max_bytes, size=size,
                                    deadline=deadline, timeout_s=limits.timeout_s, progress=progress)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{what}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise DownloadError(f"{what}: cannot download ({exc.reason})") from None
        except TimeoutError:
            raise DownloadError(f"{what}: no data for {min(SOCKET_TIMEOUT_S, limits.timeout_s):.0f} s; try again "
                                "later") from None
        except OSError as exc:
            raise DownloadError(f"{what}: connection failed ({exc})") from None
