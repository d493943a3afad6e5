"""Installed models on disk: versioned bundle folders plus ``active`` and ``previous`` symlinks.

Layout of ``<state_dir>/models``::

    tiny-1.2.0-3fa4b2c1/        a verified bundle (name-version-first 8 hex of its manifest sha256)
    tiny-1.3.0-9d0e11aa/
    active   -> tiny-1.3.0-9d0e11aa
    previous -> tiny-1.2.0-3fa4b2c1
    pending.json                 a switch being watched (see manager.py)
    .lock                        serialises the agent and the ``crackseg-edge model`` CLI

Why this shape: every state a ``kill -9`` or a power cut can leave behind is usable. A bundle
folder is written under a ``.tmp-*`` name, every file and folder fsynced and re-verified,
and only then renamed into place; a symlink is switched by creating a temporary link and
``os.replace``-ing it over the old one (atomic on POSIX), then fsyncing the folder. So
``active`` always names a complete folder or the previous one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_agent.bundle import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Bundle,
    BundleError,
    load_bundle,
    verify_bundle_dir,
)
from edge_agent.bundle.manifest import CHECKSUM_NAME, version_key
from edge_agent.errors import UserError
from edge_agent.updates.durable import (  # noqa: F401 - KILL_ENV, kill_point, write_file_synced: re-exported
    KILL_ENV,
    copy_synced,
    fsync_path,
    kill_point,
    remove_link,
    replace_symlink,
    write_file_synced,
)

log = logging.getLogger(__name__)

ACTIVE = "active"
PREVIOUS = "previous"
PENDING = "pending.json"
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
LOCK_TIMEOUT_S = 120.0


class UpdateError(UserError):
    """An update or model-management step that cannot be done; the message says why and what to do."""


class StoreError(UpdateError):
    """The model store (``<state_dir>/models``) refuses an operation or holds something unusable."""


@dataclass
class InstalledModel:
    """One folder of the store as ``crackseg-edge model list`` and the ``model-status`` command show it."""

    dir: str
    path: str
    name: str | None
    version: str | None
    signed: bool
    valid: bool
    error: str | None
    active: bool
    previous: bool
    installed: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelStore:
    """``<state_dir>/models``: install verified bundles, switch ``active``/``previous``, clean up."""

    def __init__(self, root: str | Path, public_key: Any = None, require_signature: bool = False):
        self.root = Path(root)
        self.public_key = public_key
        self.require_signature = require_signature

    # -- paths -----------------------------------------------------------------------------
    @property
    def active_link(self) -> Path:
        return self.root / ACTIVE

    @property
    def previous_link(self) -> Path:
        return self.root / PREVIOUS

    def _link_target(self, link: Path) -> Path | None:
        try:
            name = os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a plain file or folder where a link should be
                raise StoreError(f"{link} is not a symlink; move it away (the store manages it)") from None
            raise
        if "/" in name or name.startswith(".") or name in ("", ".."):
            raise StoreError(f"{link} points to '{name}', outside {self.root}; remove the link")
        return self.root / name

    def active(self) -> Path | None:
        """The folder ``active`` names (it may be missing or invalid: see ``verify``)."""
        return self._link_target(self.active_link)

    def previous(self) -> Path | None:
        return self._link_target(self.previous_link)

    def model_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink()
                      and not p.name.startswith("."))

    # -- locking ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Exclusive across processes (the agent and the CLI) and threads (separate open files)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(f"{self.root}: another process is changing the installed models "
                                         f"(lock held for over {timeout_s:.0f} s); try again later") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # -- checks ----------------------------------------------------------------------------
    def verify(self, path: Path) -> Bundle:
        """Every hash (and the signature when a key is configured); StoreError with the reason."""
        try:
            return verify_bundle_dir(path, self.public_key, self.require_signature)
        except BundleError as exc:
            raise StoreError(str(exc)) from None

    # -- install ---------------------------------------------------------------------------
    def install(self, source: str | Path, max_bytes: int = 2 << 30) -> tuple[Path, Bundle]:
        """Unpack/verify ``source`` (archive or folder) into a new versioned folder; returns it.

        Nothing outside a ``.tmp-*`` folder is touched until the copy is complete, fsynced and
        verified again; installing the same bundle twice reuses the existing folder.
        """
        source = Path(source)
        with self.lock():
            work = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "install-", dir=self.root))
            try:
                try:
                    bundle = load_bundle(source, self.public_key, self.require_signature,
                                         cache_dir=work / "unpack", max_bytes=max_bytes)
                except BundleError as exc:  # name the file inside the archive, not a folder deleted below
                    unpacked = re.escape(str(work / "unpack")) + r"/[^/]+/"
                    raise StoreError(re.sub(unpacked, f"{source.name}: ", str(exc))) from None
                kill_point("unpacked")
                staging = work / "bundle"
                names = [MANIFEST_NAME, CHECKSUM_NAME] + [e.file for e in bundle.manifest.files()]
                if (bundle.root / SIGNATURE_NAME).is_file():
                    names.append(SIGNATURE_NAME)
                for name in sorted(set(names)):
                    copy_synced(bundle.root / name, staging / name)
                for folder in sorted({p for p in staging.rglob("*") if p.is_dir()}, key=lambda p: -len(p.parts)):
                    fsync_path(folder)
                fsync_path(staging)
                checked = self.verify(staging)  # what is on disk now, not what was unpacked
                kill_point("staged")
                digest = hashlib.sha256((staging / MANIFEST_NAME).read_bytes()).hexdigest()[:8]
                final = self.root / f"{checked.name}-{checked.version}-{digest}"
                if final.exists():
                    try:
                        existing = self.verify(final)
                        log.info("%s is already installed and intact; reusing it", final.name)
                        os.utime(final)  # counts as recently installed for gc()
                        return final, existing
                    except StoreError:
                        os.rename(final, work / "damaged")  # replaced by the fresh copy below
                os.rename(staging, final)
                fsync_path(self.root)
                kill_point("installed")
                return final, self.verify(final)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    # -- switching -------------------------------------------------------------------------
    def _own_dir(self, path: Path) -> Path:
        path = Path(path)
        if path.parent.resolve() != self.root.resolve() or path.name.startswith(".") or not path.is_dir():
            raise StoreError(f"{path} is not an installed model folder of {self.root}")
        return self.root / path.name

    def activate(self, path: str | Path) -> Path | None:
        """Make ``path`` active and the current active one previous; returns the old active folder."""
        target = self._own_dir(Path(path))
        self.verify(target)
        with self.lock():
            current = self.active()
            if current is not None and current.name == target.name:
                return current
            if current is not None:
                replace_symlink(self.previous_link, current.name)
            else:
                remove_link(self.previous_link)  # rolling back must return to the configured model
            kill_point("previous_linked")
            replace_symlink(self.active_link, target.name)
            kill_point("activated")
            return current

    def rollback(self) -> Path | None:
        """Swap ``active`` and ``previous``; without a previous one, drop ``active`` (configured model).

        Returns the folder that is active now, or None when the configured model is next.
        """
        with self.lock():
            current, prev = self.active(), self.previous()
            if prev is not None:
                replace_symlink(self.active_link, prev.name)
                kill_point("rollback_active")
                if current is not None:
                    replace_symlink(self.previous_link, current.name)
                else:
                    remove_link(self.previous_link)
                return prev
            if current is not None:
                remove_link(self.active_link)
                return None
            raise StoreError(f"nothing to roll back: no model is installed in {self.root}")

    def deactivate(self) -> Path | None:
        """Remove ``active`` (the configured model runs next); returns the folder it named."""
        with self.lock():
            current = self.active()
            remove_link(self.active_link)
            return current

    # -- pending switch marker (written by the manager) ------------------------------------
    def read_pending(self) -> dict | None:
        try:
            data = json.loads((self.root / PENDING).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("%s is unreadable; ignoring it", self.root / PENDING)
            return None
        return data if isinstance(data, dict) and isinstance(data.get("dir"), str) else None

    def write_pending(self, data: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_file_synced(self.root / PENDING, json.dumps(data, indent=1).encode())

    def clear_pending(self) -> None:
        remove_link(self.root / PENDING)

    # -- housekeeping ----------------------------------------------------------------------
    def remove_unused(self, folder: Path) -> None:
        """Delete an installed folder that failed a later check, unless a link names it."""
        with self.lock():
            if folder.name not in {p.name for p in (self.active(), self.previous()) if p is not None}:
                shutil.rmtree(self.root / folder.name, ignore_errors=True)

    def cleanup_temp(self) -> list[str]:
        """Remove what an interrupted install or switch left (``.tmp-*`` folders, temp links)."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        with self.lock():
            for p in self.root.iterdir():
                if p.name.startswith(".") and ".tmp-" in p.name:  # model folders never start with '.'
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
                    removed.append(p.name)
            if removed:
                fsync_path(self.root)
                log.info("removed leftovers of an interrupted update: %s", ", ".join(sorted(removed)))
        return removed

    def gc(self, keep_versions: int, protect: set[str] | None = None) -> list[str]:
        """Delete the oldest folders beyond ``keep_versions`` besides the active one."""
        removed: list[str] = []
        with self.lock():
            active, prev = self.active(), self.previous()
            keep = {p.name for p in (active, prev) if p is not None} | set(protect or ())
            others = sorted((d for d in self.model_dirs() if d.name not in keep),
                            key=lambda d: d.stat().st_mtime, reverse=True)
            budget = max(0, keep_versions - (1 if prev is not None else 0))
            for d in others[budget:]:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
            if removed:
                fsync_path(self.root)
        return removed

    def list(self) -> list[InstalledModel]:
        active, prev = self.active(), self.previous()
        out = []
        for d in self.model_dirs():
            name = version = error = None
            signed = valid = False
            try:
                bundle = self.verify(d)
                name, version, signed, valid = bundle.name, bundle.version, bundle.signed, True
            except StoreError as exc:
                error = str(exc)
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    raw = json.loads((d / MANIFEST_NAME).read_text())
                    name, version = raw.get("name"), raw.get("version")
            out.append(InstalledModel(dir=d.name, path=str(d), name=name, version=version, signed=signed,
                                      valid=valid, error=error, active=active is not None and active.name == d.name,
                                      previous=prev is not None and prev.name == d.name,
                                      installed=d.stat().st_mtime))

        def order(m: InstalledModel) -> tuple:
            try:
                return (0, version_key(m.version or ""), m.installed)
            except ValueError:
                return (-1, (), m.installed)

        return sorted(out, key=order)

    def find(self, version_or_dir: str) -> Path:
        """The installed folder named so, or the only one holding that version."""
        direct = self.root / version_or_dir
        if "/" not in version_or_dir and not version_or_dir.startswith(".") and direct.is_dir() \
                and not direct.is_symlink():
            return direct
        matches = [m for m in self.list() if m.version == version_or_dir]
        if not matches:
            have = ", ".join(f"{m.version} ({m.dir})" for m in self.list()) or "none"
            raise StoreError(f"no installed model has version {version_or_dir} (installed: {have})")
        if len(matches) > 1:
            raise StoreError(f"several installed models have version {version_or_dir}: "
                             f"{', '.join(m.dir for m in matches)}; give the folder name instead")
        return Path(matches[0].path)
