"""Durable file operations for the update code, and the crash-test hook that proves them.

Why one module: every state a ``kill -9`` or a power cut can leave behind must be usable, and
that rests on a handful of primitives used the same way everywhere: write to a temporary
name, fsync, rename, fsync the folder; switch a symlink by renaming a new one over it.
``kill_point`` marks the steps between them, so tests/test_updates_killpoints.py can cut
the process at each one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
from pathlib import Path

log = logging.getLogger(__name__)

KILL_ENV = "CRACKSEG_TEST_KILL_AT"


def kill_point(stage: str) -> None:
    """Crash-test hook: SIGKILL this process at ``stage`` when ``$CRACKSEG_TEST_KILL_AT`` names it.

    Used by tests/test_updates_killpoints.py to prove that a power cut at any step leaves a
    valid model; a no-op unless the variable is set to exactly this stage.
    """
    if os.environ.get(KILL_ENV) == stage:
        log.warning("test hook: killing the process at stage %s", stage)
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes renames and new links in it durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_synced(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def replace_symlink(link: Path, target_name: str) -> None:
    """Point ``link`` at ``target_name`` (relative) atomically and durably."""
    tmp = link.with_name(f".{link.name}.tmp-{secrets.token_hex(4)}")
    os.symlink(target_name, tmp)
    kill_point(f"{link.name}_tmp_link")
    os.replace(tmp, link)
    fsync_path(link.parent)


def remove_link(link: Path) -> None:
    """Remove a link (or marker file) if it is there, durably."""
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
        fsync_path(link.parent)


def copy_synced(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new file ``dst`` and fsync it (``dst`` must not exist)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
        fo.flush()
        os.fsync(fo.fileno())
