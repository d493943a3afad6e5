"""Start-up recovery: which installed model to load after a restart, and what to do with a pending switch.

Why this runs before the model is loaded: a model that crashes the runtime, or stalls frames
until the systemd watchdog kills the agent, must not keep a vehicle in a restart loop. So at
start, before anything is loaded:

- leftovers of an interrupted update (``.tmp-*`` folders and links, ``.part`` downloads,
  stale chunked transfers) are removed;
- ``pending.json`` marks a switch still being watched. If ``active`` does not name its
  folder the switch never completed and the marker is dropped; otherwise this start counts
  as a restart during the watch, and after ``max_restarts_while_watching`` of them the
  switch is rolled back (links only: the old model is what gets loaded next); before that
  the watch resumes;
- ``active`` is used if it still verifies, else ``previous`` (and ``active`` is made to say
  so), else the configured model (``model.path`` or the shipped reference).

Reports made here go out with the first ``observe()``: the broker link does not exist yet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.updates.state import Job, Stage
from edge_agent.updates.store import StoreError
from edge_agent.updates.watch import ServiceWatch

if TYPE_CHECKING:
    from edge_agent.updates.manager import UpdateManager

log = logging.getLogger(__name__)


def resolve_startup_model(m: UpdateManager) -> Path | None:
    """The installed model to load at start: active if valid, else previous, else None (configured model)."""
    try:
        m.store.cleanup_temp()
        m.downloads.cleanup_partial()
        m.chunks.cleanup_stale()
        _handle_pending(m)
        return _usable_installed(m)
    except StoreError as exc:  # e.g. a hand-made 'active' that is not a link: run the configured model
        note_startup(m, "model store unusable", reason=str(exc))
        return None


def note_startup(m: UpdateManager, what: str, **fields: Any) -> None:
    log.warning("model store: %s %s", what, fields)
    m.audit_log.write("model-startup", what, "agent", **fields)
    m.defer_report({"stage": Stage.STARTUP.value, "note": what, **fields})


def _usable_installed(m: UpdateManager) -> Path | None:
    store = m.store
    active = store.active()
    if active is not None:
        try:
            store.verify(active)
            return active
        except StoreError as exc:
            note_startup(m, "active model unusable", reason=str(exc), dir=active.name)
            store.clear_pending()
            m.state.stop_watching()  # a resumed watch was about this unusable model
    previous = store.previous()
    if previous is None:
        return None
    try:
        store.verify(previous)
    except StoreError as exc:
        note_startup(m, "previous model unusable", reason=str(exc), dir=previous.name)
        return None
    if active is not None:
        store.rollback()  # make the links say what runs
    note_startup(m, "fell back to the previous model", dir=previous.name)
    return previous


def _handle_pending(m: UpdateManager) -> None:
    store = m.store
    pending = store.read_pending()
    if pending is None:
        return
    active = store.active()
    if active is None or active.name != pending["dir"]:
        store.clear_pending()  # the switch never completed: the old model is still active
        note_startup(m, "unfinished switch discarded", dir=pending["dir"], update_id=pending.get("update_id"))
        return
    try:
        restarts = int(pending.get("restarts", 0)) + 1
    except (TypeError, ValueError):
        restarts = m.ucfg.max_restarts_while_watching  # a damaged marker: do not trust the switch
    if restarts >= m.ucfg.max_restarts_while_watching:
        _roll_back_before_loading(m, pending, restarts)
        return
    pending["restarts"] = restarts
    store.write_pending(pending)
    fps = pending.get("fps_before")
    fps_before = float(fps) if isinstance(fps, (int, float)) and not isinstance(fps, bool) else None
    job = Job(update_id=str(pending.get("update_id") or "resumed"), origin=str(pending.get("origin", "unknown")),
              sha256=str(pending.get("sha256", "")), version=pending.get("version"))
    m.state.resume_watch(job, ServiceWatch(m.rules, m.clock(), fps_before))
    m.defer_report({"stage": Stage.WATCHING.value, "update_id": job.update_id, "version": job.version,
                    "resumed_after_restart": restarts, "origin": job.origin})


def _roll_back_before_loading(m: UpdateManager, pending: dict, restarts: int) -> None:
    reason = (f"the agent restarted {restarts} times within the watch window of {pending['dir']} "
              "(crash or watchdog)")
    now_active = m.store.rollback()
    m.store.clear_pending()
    result = {"stage": Stage.ROLLED_BACK.value, "update_id": pending.get("update_id"), "reason": reason,
              "from": pending["dir"], "to": now_active.name if now_active else "configured model", "origin": "watch"}
    m.state.record_result(result)
    m.audit_log.write("model-rollback", "rolled_back", "watch",
                      **{k: v for k, v in result.items() if k != "origin"})
    m.defer_report(result)
