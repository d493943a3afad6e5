"""``crackseg-edge model list | activate VERSION | rollback``: the installed models, by hand.

For the technician at the vehicle (or over SSH) when the back office cannot reach it. Works
on the same ``<state_dir>/models`` as the agent, under the same lock; ``activate`` runs the
bundle's self-test with the device's configured backend first. The running agent keeps its
model until it is restarted (``sudo systemctl restart crackseg-edge``).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path

from edge_agent.errors import EXIT_USER_ERROR, UserError
from edge_agent.updates.audit import AUDIT_NAME, AuditLog
from edge_agent.updates.device import cli_origin, model_loader, selftest_segmenter
from edge_agent.updates.store import ModelStore, UpdateError


def _context(args: argparse.Namespace):
    """(state_dir, model config) from --config and --state-dir (--state-dir wins)."""
    from edge_agent.config.sections import ModelConfig, default_state_dir

    model_cfg = ModelConfig()
    state_dir = None
    if getattr(args, "config", None):
        from edge_agent.config import load_config

        cfg = load_config(args.config)
        model_cfg, state_dir = cfg.model, Path(cfg.state_dir)
    if getattr(args, "state_dir", None):
        state_dir = Path(args.state_dir).expanduser()
    if model_cfg.public_key_credential:
        from edge_agent.config import SecretError, model_public_key

        try:
            model_public_key(model_cfg)
        except SecretError:  # systemd credentials exist only inside the service
            print("crackseg-edge: warning: model.public_key_credential is readable only by the service; "
                  "signatures are not checked here (file hashes are)", file=sys.stderr)
            model_cfg = model_cfg.model_copy(update={"public_key_credential": None, "require_signature": False})
    return state_dir or default_state_dir(), model_cfg


def _store(state_dir: Path, model_cfg) -> ModelStore:
    from edge_agent.config import model_public_key

    key = model_public_key(model_cfg) if (model_cfg.public_key_file or model_cfg.public_key_credential) else None
    return ModelStore(state_dir / "models", key, model_cfg.require_signature)


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


def _activate(store: ModelStore, audit: AuditLog, model_cfg, version: str | None) -> int:
    if not version:
        raise UpdateError("activate needs a VERSION (or a folder name from 'crackseg-edge model list')")
    folder = store.find(version)
    bundle = store.verify(folder)
    try:
        seg = model_loader(model_cfg)(folder)
    except Exception as exc:
        raise UpdateError(f"{folder.name} does not load with this device's settings: {exc}") from None
    result = selftest_segmenter(seg, bundle)
    old = store.activate(folder)
    store.clear_pending()
    audit.write("model-activate", "active", cli_origin(), dir=folder.name, version=bundle.version,
                previous=old.name if old else None, selftest=result)
    print(f"active: {folder.name} (selftest max |diff| {result['max_abs']:.4f} <= {result['max_abs_allowed']:.4f}); "
          f"previous: {old.name if old else 'none (the configured model)'}")
    print("restart the agent to load it: sudo systemctl restart crackseg-edge")
    return 0


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


def _match_owner(state_dir: Path) -> None:
    """Run as root on a ``DynamicUser=`` service, leave what we wrote owned like the state folder.

    Otherwise a root-owned ``audit.jsonl`` or link could not be appended to or replaced by
    the agent after the restart.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not state_dir.is_dir():
        return
    st = state_dir.stat()
    models = state_dir / "models"
    for p in (models, models / ".lock", models / "active", models / "previous", state_dir / AUDIT_NAME):
        try:
            os.lchown(p, st.st_uid, st.st_gid)
        except FileNotFoundError:
            pass


def model_command(args: argparse.Namespace) -> int:
    """Entry point of ``crackseg-edge model``; user errors print one line and return 2."""

    try:
        state_dir, model_cfg = _context(args)
        store = _store(state_dir, model_cfg)
        audit = AuditLog(state_dir / AUDIT_NAME)
        if args.action == "list":
            return _list(store)
        try:
            if args.action == "activate":
                return _activate(store, audit, model_cfg, args.version)
            if args.action == "rollback":
                if args.version:
                    raise UpdateError("rollback takes no VERSION (it returns to the previous model); use "
                                      "'activate VERSION' for a specific one")
                return _rollback(store, audit)
        finally:
            _match_owner(state_dir)
        raise UpdateError(f"unknown action '{args.action}': use list, activate VERSION or rollback")
    except UserError as exc:
        print(f"crackseg-edge: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
