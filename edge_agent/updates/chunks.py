"""Chunked transfer over MQTT: a bundle archive sent as ``model-chunk`` commands, stored as it arrives.

For vehicles whose only link is the broker: the office splits the archive into chunks; each
chunk is fsynced to ``<downloads>/transfers/<transfer_id>/`` as it arrives, so a restart (or
a lost link) only costs the chunks not yet received, and the office may resend any chunk
(duplicates are harmless). When the last missing chunk arrives the archive is assembled
through ``DownloadArea.receive`` and ends where a download would, checked the same way.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edge_agent.updates.download import DownloadArea, DownloadError, check_sha256
from edge_agent.updates.durable import kill_point, write_file_synced
from edge_agent.updates.store import UpdateError
from edge_agent.util.files import sha256_file

TRANSFER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_CHUNKS = 65536


class TransferError(UpdateError):
    """A ``model-chunk`` command that cannot be accepted (the chunks received so far are kept)."""


def check_transfer_id(value: object) -> str:
    """A transfer id is a folder name: letters, digits, '_', '-', '.', never '..' or a path."""
    if not isinstance(value, str) or not TRANSFER_ID_RE.match(value):
        raise TransferError("'transfer_id' must be 1-64 letters, digits, '_', '-' or '.'")
    return value


def iter_chunk_commands(archive: str | Path, chunk_bytes: int = 192 * 1024, transfer_id: str | None = None,
                        version: str | None = None) -> Iterator[dict]:
    """Office side: the ``model-chunk`` bodies for ``archive``, in order (publish each, QoS 1).

    ``chunk_bytes`` is the decoded size; base64 adds a third, so the default stays under a
    256 KiB broker ``message_size_limit`` and under the device's ``updates.chunk_max_bytes``.
    """
    archive = Path(archive)
    size = archive.stat().st_size
    sha256 = sha256_file(archive)
    count = max(1, -(-size // chunk_bytes))
    tid = transfer_id or f"t-{sha256[:16]}"
    with open(archive, "rb") as f:
        for index in range(count):
            body = {"transfer_id": tid, "index": index, "count": count, "sha256": sha256,
                    "data": base64.b64encode(f.read(chunk_bytes)).decode("ascii")}
            if version:
                body["version"] = version
            yield body


@dataclass(frozen=True)
class ChunkProgress:
    transfer_id: str
    received: int
    count: int
    bytes: int
    complete: Path | None = None

    def to_dict(self) -> dict:
        return {"transfer_id": self.transfer_id, "received": self.received, "count": self.count,
                "bytes": self.bytes, "complete": self.complete is not None}


@dataclass(frozen=True)
class OpenTransfer:
    """An unfinished transfer as refusals and ``model-status`` list it."""

    transfer_id: str
    received: int
    count: int
    bytes: int
    idle_s: float

    def describe(self) -> str:
        return (f"'{self.transfer_id}' ({self.received}/{self.count} chunks, {self.bytes} bytes, last chunk "
                f"{self.idle_s:.0f} s ago)")

    def to_dict(self) -> dict:
        return {"transfer_id": self.transfer_id, "received": self.received, "count": self.count,
                "bytes": self.bytes, "idle_s": round(self.idle_s, 1)}


class ChunkAssembler:
    """``<downloads>/transfers/<transfer_id>/``: ``meta.json`` plus one file per received chunk.

    Bounded, because whoever may publish ``model-chunk`` could otherwise open transfer after
    transfer under new ids until the disk is full: at most ``max_open`` unfinished transfers,
    at most ``max_total_bytes`` in ``downloads/`` (unfinished chunks plus received archives
    waiting for their update; default twice ``max_bundle_bytes``), and a transfer that got no
    chunk for ``max_age_s`` is deleted (when the next chunk of any transfer arrives, and at
    start). A refusal names the open transfers and how to end one (``abort``).
    """

    def __init__(self, area: DownloadArea, max_bundle_bytes: int, chunk_max_bytes: int,
                 max_age_s: float = 3600.0, max_open: int = 2, max_total_bytes: int | None = None):
        self.area = area
        self.dir = area.root / "transfers"
        self.max_bundle_bytes = int(max_bundle_bytes)
        self.chunk_max_bytes = int(chunk_max_bytes)
        self.max_age_s = max_age_s
        self.max_open = int(max_open)
        self.max_total_bytes = int(max_total_bytes) if max_total_bytes else 2 * self.max_bundle_bytes
        self._lock = threading.Lock()

    def _check(self, transfer_id: object, index: object, count: object, sha256: object) -> tuple[str, int, int, str]:
        transfer_id = check_transfer_id(transfer_id)
        for name, v in (("index", index), ("count", count)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TransferError(f"'{name}' must be an integer")
        assert isinstance(index, int) and isinstance(count, int)
        if not 1 <= count <= MAX_CHUNKS:
            raise TransferError(f"'count' must be between 1 and {MAX_CHUNKS}")
        if not 0 <= index < count:
            raise TransferError(f"'index' {index} is outside 0..{count - 1}")
        try:
            sha = check_sha256(sha256)
        except DownloadError as exc:
            raise TransferError(str(exc)) from None
        return transfer_id, index, count, sha

    def add(self, transfer_id: str, index: int, count: int, sha256: str, data: bytes) -> ChunkProgress:
        """Store one chunk durably; when it was the last missing one, assemble and verify the archive."""
        transfer_id, index, count, sha256 = self._check(transfer_id, index, count, sha256)
        if len(data) > self.chunk_max_bytes:
            raise TransferError(f"chunk {index} holds {len(data)} bytes, over updates.chunk_max_bytes "
                                f"({self.chunk_max_bytes}); split the archive into smaller chunks")
        if not data:
            raise TransferError(f"chunk {index} is empty")
        with self._lock:
            done = self.area.find_complete(sha256)
            if done is not None:  # assembled before (a resend after a restart or a lost response)
                self._remove(transfer_id)
                return ChunkProgress(transfer_id, count, count, done.stat().st_size, done)
            self._expire()
            folder = self.dir / transfer_id
            meta = self._meta(folder)
            if meta is None:
                self._refuse_new_transfer(transfer_id)
            elif meta["count"] != count or meta["sha256"] != sha256:
                raise TransferError(f"transfer '{transfer_id}' was started with count {meta['count']} and sha256 "
                                    f"{meta['sha256'][:12]}...; use a new transfer_id for another file, or end "
                                    "this one with model-chunk-abort")
            have = self._received(folder) if meta is not None else {}
            total = sum(have.values()) - have.get(index, 0) + len(data)
            if total > self.max_bundle_bytes:
                raise TransferError(f"transfer '{transfer_id}' exceeds updates.max_bundle_bytes "
                                    f"({self.max_bundle_bytes} bytes); refused")
            self._refuse_growth(len(data) - have.get(index, 0), transfer_id)
            if meta is None:
                folder.mkdir(parents=True, exist_ok=True)
                meta = {"transfer_id": transfer_id, "count": count, "sha256": sha256, "created": time.time()}
                write_file_synced(folder / "meta.json", json.dumps(meta).encode())
            write_file_synced(folder / f"chunk-{index:06d}", data)
            have[index] = len(data)
            kill_point("chunk_written")
            if len(have) < count:
                return ChunkProgress(transfer_id, len(have), count, total)
            path = self._assemble(folder, count, sha256, transfer_id)
            return ChunkProgress(transfer_id, count, count, total, path)

    # -- limits ------------------------------------------------------------------------------
    def _how_to_end(self) -> str:
        return ("end one with model-chunk-abort {\"transfer_id\": \"...\"}, finish it, or let it expire after "
                f"{self.max_age_s:.0f} s without a chunk (updates.transfer_max_age_s)")

    def _refuse_new_transfer(self, transfer_id: str) -> None:
        open_now = self.open_transfers()
        if len(open_now) >= self.max_open:
            raise TransferError(f"transfer '{transfer_id}' refused: {len(open_now)} transfers are open already "
                                f"(updates.max_open_transfers {self.max_open}): "
                                f"{', '.join(t.describe() for t in open_now)}; {self._how_to_end()}")

    def _refuse_growth(self, growth: int, transfer_id: str) -> None:
        if growth <= 0:
            return
        if self.disk_bytes() + growth > self.max_total_bytes:
            waiting = [p.name for p in self.area.root.glob("*") if p.is_file() and not p.name.endswith(".part")]
            raise TransferError(
                f"transfer '{transfer_id}' refused: {self.area.root} would hold more than {self.max_total_bytes} "
                f"bytes (updates.transfers_max_bytes); open: "
                f"{', '.join(t.describe() for t in self.open_transfers()) or 'none'}"
                + (f"; received archives waiting for their update: {', '.join(waiting)}" if waiting else "")
                + f"; {self._how_to_end()}")

    def disk_bytes(self) -> int:
        """Data under ``downloads/``: unfinished chunks, received archives, a download under way.

        The few bytes of each ``meta.json`` are left out, so that two full transfers fit in
        the default of twice ``max_bundle_bytes``.
        """
        total = 0
        if self.area.root.is_dir():
            for p in self.area.root.rglob("*"):
                try:
                    if p.is_file() and not p.is_symlink() and p.name != "meta.json":
                        total += p.stat().st_size
                except OSError:
                    continue
        return total

    def open_transfers(self) -> list[OpenTransfer]:
        out = []
        now = time.time()
        for folder in sorted(self.dir.iterdir()) if self.dir.is_dir() else []:
            meta = self._meta(folder)
            if meta is None:
                continue
            have = self._received(folder)
            out.append(OpenTransfer(folder.name, len(have), int(meta["count"]), sum(have.values()),
                                    max(0.0, now - self._last_activity(folder, meta))))
        return out

    def abort(self, transfer_id: object) -> OpenTransfer:
        """Delete an unfinished transfer; TransferError (naming the open ones) when there is none."""
        transfer_id = check_transfer_id(transfer_id)
        with self._lock:
            match = [t for t in self.open_transfers() if t.transfer_id == transfer_id]
            if not match:
                open_now = ", ".join(t.describe() for t in self.open_transfers()) or "none"
                raise TransferError(f"no open transfer '{transfer_id}' (open: {open_now})")
            self._remove(transfer_id)
            return match[0]

    def _last_activity(self, folder: Path, meta: dict) -> float:
        """When the transfer last got a chunk: a new chunk file changes the folder's mtime."""
        try:
            mtime = folder.stat().st_mtime
        except OSError:
            mtime = 0.0
        created = meta.get("created")
        return max(mtime, float(created) if isinstance(created, (int, float)) else 0.0)

    def _expire(self) -> list[str]:
        """Drop transfers idle longer than ``max_age_s`` (and folders without a readable meta.json)."""
        removed: list[str] = []
        now = time.time()
        for folder in list(self.dir.iterdir()) if self.dir.is_dir() else []:
            meta = self._meta(folder)
            if meta is None or now - self._last_activity(folder, meta) > self.max_age_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

    def _assemble(self, folder: Path, count: int, sha256: str, transfer_id: str) -> Path:
        reader = _ChunkReader([folder / f"chunk-{i:06d}" for i in range(count)])
        try:
            path = self.area.receive(sha256, reader.read, what=f"transfer '{transfer_id}'",
                                     max_bytes=self.max_bundle_bytes)
        except DownloadError as exc:
            self._remove(transfer_id)  # the chunks are wrong as a whole: start over
            raise TransferError(f"{exc}; the transfer was discarded, send all chunks again") from None
        finally:
            reader.close()
        kill_point("assembled")
        self._remove(transfer_id)
        return path

    def status(self, transfer_id: str) -> dict | None:
        folder = self.dir / transfer_id
        meta = self._meta(folder)
        if meta is None:
            return None
        have = self._received(folder)
        missing = [i for i in range(meta["count"]) if i not in have]
        return {"transfer_id": transfer_id, "count": meta["count"], "received": len(have), "missing": missing[:100]}

    def cleanup_stale(self) -> list[str]:
        """At start: drop idle transfers, those whose archive is complete already, and received
        archives older than ``max_age_s`` (no update can be using one before the agent runs)."""
        with self._lock:
            removed = self._expire()
            for folder in list(self.dir.iterdir()) if self.dir.is_dir() else []:
                meta = self._meta(folder)
                if meta is not None and self.area.find_complete(meta["sha256"]) is not None:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder.name)
            now = time.time()
            for p in list(self.area.root.glob("*")) if self.area.root.is_dir() else []:
                try:
                    old = p.is_file() and now - p.stat().st_mtime > self.max_age_s
                except OSError:
                    continue
                if old:
                    p.unlink(missing_ok=True)
                    removed.append(p.name)
        return removed

    def _remove(self, transfer_id: str) -> None:
        shutil.rmtree(self.dir / transfer_id, ignore_errors=True)

    @staticmethod
    def _meta(folder: Path) -> dict | None:
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(meta, dict) and isinstance(meta.get("count"), int) and isinstance(meta.get("sha256"), str)
        return meta if ok else None

    @staticmethod
    def _received(folder: Path) -> dict[int, int]:
        have: dict[int, int] = {}
        for p in folder.glob("chunk-*"):
            suffix = p.name[len("chunk-"):]
            if suffix.isdigit():
                have[int(suffix)] = p.stat().st_size
        return have


class _ChunkReader:
    """The chunk files one after the other as one ``read(n)`` stream."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.index = 0
        self.current: IO[bytes] | None = None

    def read(self, n: int) -> bytes:
        while self.index < len(self.files):
            if self.current is None:
                self.current = open(self.files[self.index], "rb")
            block = self.current.read(n)
            if block:
                return block
            self.close()
            self.index += 1
        return b""

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
