"""File hashing and durable appends: the two file operations several packages depend on."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (bundles and checkpoints can be larger than RAM allows)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def append_line_synced(path: str | Path, line: str, mode: int = 0o600) -> None:
    """Append one text line and fsync before returning.

    Why: audit records and command nonces must survive a power cut that comes right after
    the call returns (a replayed command must stay refused; a model switch must stay
    explained). ``O_APPEND`` keeps concurrent writers from interleaving inside a line.
    """
    if not line.endswith("\n"):
        line += "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
