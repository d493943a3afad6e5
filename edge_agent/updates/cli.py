"""``crackseg-edge model list | install BUNDLE | activate VERSION | rollback``: installed models, by hand.

For the technician at the vehicle (or over SSH) when the back office cannot reach it. Works
on the same ``<state_dir>/models`` as the agent, under the same lock. ``install`` takes a
bundle archive or folder (a USB stick), verifies it (signed by the configured key when one
is configured), runs its self-test with this device's backend, installs and activates it;
``activate`` runs the self-test first too. The running agent keeps its model until it is
restarted (``sudo systemctl restart crackseg-edge``). Everything is audited as ``cli:<user>``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent.errors import EXIT_USER_ERROR, UserError
from edge_agent.updates.audit import AUDIT_NAME, AuditLog
from edge_agent.updates.device import cli_origin, model_loader, model_public_key_of, selftest_segmenter
from edge_agent.updates.store import ModelStore, UpdateError

INSTALL_MAX_BYTES = 2 << 30  # without a config: the bundle loader's own limit


@dataclass
class CliContext:
    state_dir: Path
    model_cfg: Any  # ModelConfig
    max_bytes: int
    key_unreadable: bool  # a key is configured as a credential this user cannot read


def _context(args: argparse.Namespace) -> CliContext:
    """State folder, model config and size limit from --config, --state-dir and --public-key."""
    from edge_agent.config.sections import ModelConfig, default_state_dir

    model_cfg = ModelConfig.model_validate({})
    state_dir, max_bytes = None, INSTALL_MAX_BYTES
    if getattr(args, "config", None):
        from edge_agent.config import load_config

        cfg = load_config(args.config)
        model_cfg, state_dir, max_bytes = cfg.model, Path(cfg.state_dir), int(cfg.updates.max_bundle_bytes)
    if getattr(args, "state_dir", None):
        state_dir = Path(args.state_dir).expanduser()
    key_unreadable = False
    if getattr(args, "public_key", None):
        model_cfg = model_cfg.model_copy(update={"public_key_file": Path(args.public_key).expanduser(),
                                                 "public_key_credential": None})
    elif model_cfg.public_key_credential:
        from edge_agent.config import SecretError, model_public_key

        try:
            model_public_key(model_cfg)
        except SecretError:  # systemd credentials exist only inside the service
            key_unreadable = True
            model_cfg = model_cfg.model_copy(update={"public_key_credential": None, "require_signature": False})
    return CliContext(state_dir or default_state_dir(), model_cfg, max_bytes, key_unreadable)


def _store(ctx: CliContext, require_signature: bool | None = None) -> ModelStore:
    key = model_public_key_of(ctx.model_cfg)
    required = ctx.model_cfg.require_signature if require_signature is None else require_signature
    return ModelStore(ctx.state_dir / "models", key, required)


def _list(store: ModelStore) -> int:
    models = store.list()
    if not models:
        print(f"no models installed in {store.root}; the agent uses its configured model")
        return 0
    rows = [("", "VERSION", "NAME", "FOLDER", "SIGNED", "STATE", "INSTALLED")]
    for m in models:
        mark = "*" if m.active else ("-" if m.previous else "")
        role = "active" if m.active else ("previous" if m.previous else "")
        state = "valid" if m.valid else f"INVALID: {m.error}"
        rows.append((mark, m.version or "?", m.name or "?", m.dir, "yes" if m.signed else "no",
                     f"{role + ', ' if role else ''}{state}",
                     datetime.fromtimestamp(m.installed).strftime("%Y-%m-%d %H:%M")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    if not any(m.active for m in models):
        print("no model is active: the agent uses its configured model (model.path or the shipped reference)")
    pending = store.read_pending()
    if pending:
        print(f"{pending['dir']} is being watched after an update (switched at "
              f"{datetime.fromtimestamp(pending.get('started', 0)):%Y-%m-%d %H:%M}); it may still be rolled back")
    return 0


def _selftest(model_cfg: Any, folder: Path, bundle: Any) -> dict:
    """Load ``folder`` exactly as the agent would and run its self-test; UpdateError if either fails."""
    try:
        seg = model_loader(model_cfg)(folder)
    except Exception as exc:
        raise UpdateError(f"{folder.name} does not load with this device's settings: {exc}") from None
    return selftest_segmenter(seg, bundle)


def _activate(store: ModelStore, audit: AuditLog, model_cfg: Any, version: str | None) -> int:
    if not version:
        raise UpdateError("activate needs a VERSION (or a folder name from 'crackseg-edge model list')")
    folder = store.find(version)
    bundle = store.verify(folder)
    result = _selftest(model_cfg, folder, bundle)
    old = store.activate(folder)
    store.clear_pending()
    audit.write("model-activate", "active", cli_origin(), dir=folder.name, version=bundle.version,
                previous=old.name if old else None, selftest=result)
    print(f"active: {folder.name} (selftest max |diff| {result['max_abs']:.4f} <= {result['max_abs_allowed']:.4f}); "
          f"previous: {old.name if old else 'none (the configured model)'}")
    print("restart the agent to load it: sudo systemctl restart crackseg-edge")
    return 0


def _install(ctx: CliContext, audit: AuditLog, source: str | None) -> tuple[int, Path | None]:
    """Verify, self-test, install and activate a bundle brought to the device (a USB stick).

    Why a signature is required whenever a key is configured (even without
    ``model.require_signature``): a stick found in a van is exactly the bundle nobody vouched
    for; the office key is what says it came from the office.
    """
    if not source:
        raise UpdateError("install needs a BUNDLE: a bundle archive (.tar.gz, .tar, .zip) or folder, e.g. "
                          "crackseg-edge model install /media/usb/crackseg-1.4.0.tar.gz")
    if ctx.key_unreadable:
        raise UpdateError("model.public_key_credential is readable only by the service, so this bundle's signature "
                          "cannot be checked here; give the same public key with --public-key FILE")
    path = Path(source).expanduser()
    if not path.exists():
        raise UpdateError(f"{path}: no such bundle archive or folder")
    store = _store(ctx, require_signature=ctx.model_cfg.require_signature or model_public_key_of(ctx.model_cfg)
                   is not None)
    folder, bundle = store.install(path, ctx.max_bytes)
    try:
        pinned = getattr(ctx.model_cfg, "expected_version", None)
        if pinned and bundle.version != pinned:
            raise UpdateError(f"{path} holds version {bundle.version}, this device is pinned to {pinned} "
                              "(model.expected_version)")
        result = _selftest(ctx.model_cfg, folder, bundle)
    except BaseException:
        store.remove_unused(folder)
        raise
    old = store.activate(folder)
    store.clear_pending()
    audit.write("model-install", "active", cli_origin(), dir=folder.name, version=bundle.version,
                previous=old.name if old and old.name != folder.name else None, signed=bundle.signed,
                source=str(path), selftest=result)
    if old is not None and old.name == folder.name:
        print(f"{folder.name} was already installed and active; verified and self-tested again")
    else:
        print(f"installed and active: {folder.name} ({'signed' if bundle.signed else 'NOT signed'}, selftest max "
              f"|diff| {result['max_abs']:.4f} <= {result['max_abs_allowed']:.4f}); previous: "
              f"{old.name if old else 'none (the configured model)'}")
    print("restart the agent to load it: sudo systemctl restart crackseg-edge")
    return 0, folder


def _rollback(store: ModelStore, audit: AuditLog) -> int:
    current = store.active()
    now_active = store.rollback()
    store.clear_pending()
    audit.write("model-rollback", "rolled_back", cli_origin(), reason="requested on the command line",
                **{"from": current.name if current else None,
                   "to": now_active.name if now_active else "configured model"})
    if now_active is None:
        print("no previous model: 'active' removed, the agent will use its configured model "
              "(model.path or the shipped reference)")
    else:
        print(f"active: {now_active.name}; previous: {current.name if current else 'none'}")
    print("restart the agent to load it: sudo systemctl restart crackseg-edge")
    return 0


def _match_owner(state_dir: Path, installed: Path | None = None) -> None:
    """Run as root on a ``DynamicUser=`` service, leave what we wrote owned like the state folder.

    Otherwise a root-owned ``audit.jsonl``, link or installed folder could not be appended to,
    replaced or cleaned up by the agent after the restart.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not state_dir.is_dir():
        return
    st = state_dir.stat()
    models = state_dir / "models"
    paths = [models, models / ".lock", models / "active", models / "previous", state_dir / AUDIT_NAME]
    if installed is not None and installed.is_dir():
        paths += [installed, *installed.rglob("*")]
    for p in paths:
        try:
            os.lchown(p, st.st_uid, st.st_gid)
        except FileNotFoundError:
            pass


def model_command(args: argparse.Namespace) -> int:
    """Entry point of ``crackseg-edge model``; user errors print one line and return 2."""
    try:
        ctx = _context(args)
        audit = AuditLog(ctx.state_dir / AUDIT_NAME)
        installed: Path | None = None
        if ctx.key_unreadable and args.action != "install":  # install refuses instead
            print("crackseg-edge: warning: model.public_key_credential is readable only by the service; "
                  "signatures are not checked here (file hashes are)", file=sys.stderr)
        if args.action == "list":
            return _list(_store(ctx))
        try:
            if args.action == "install":
                code, installed = _install(ctx, audit, args.version)
                return code
            if args.action == "activate":
                return _activate(_store(ctx), audit, ctx.model_cfg, args.version)
            if args.action == "rollback":
                if args.version:
                    raise UpdateError("rollback takes no VERSION (it returns to the previous model); use "
                                      "'activate VERSION' for a specific one")
                return _rollback(_store(ctx), audit)
        finally:
            _match_owner(ctx.state_dir, installed)
        raise UpdateError(f"unknown action '{args.action}': use list, install BUNDLE, activate VERSION or rollback")
    except UserError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"crackseg-edge: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
