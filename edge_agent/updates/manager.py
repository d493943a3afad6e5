"""The update manager: from a ``model-update`` command to a confirmed (or rolled back) model.

Stages, each reported through ``report`` (the agent publishes them on ``cmd/response``):

``downloading`` -> ``verifying`` (size, sha256, every file hash, the Ed25519 signature
against the device's key) -> ``selftest`` (the bundle loads with this device's backend,
threads and providers and reproduces its stored reference output) -> ``activating``
(``active``/``previous`` symlinks switched atomically, the agent swaps the running model)
-> ``watching`` (see watch.py) -> ``active`` or ``rolled_back``; any refusal is ``failed``
with the reason, and the running model keeps running.

The agent supplies three callbacks, so this module never touches the pipeline itself:
``load_model(path | None) -> Segmenter`` (None = the configured model), ``swap_model(seg)``,
and ``report(event_dict)``.

Around it: ``state.py`` holds the stage and the lock (never held while loading, swapping,
downloading or writing: the agent's health loop calls ``status()``/``observe()`` every
second), ``recovery.py`` decides at start what to load and resumes or rolls back a switch
that was being watched, ``commands.py`` turns ``model-*`` commands into calls here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.bundle import Bundle
from edge_agent.config.updates import UpdatesConfig
from edge_agent.updates import recovery
from edge_agent.updates.audit import AUDIT_NAME, AuditLog
from edge_agent.updates.chunks import ChunkAssembler
from edge_agent.updates.commands import (  # noqa: F401 - re-exported for older imports
    COMMAND_META_KEYS,
    ChunkRequest,
    UpdateRequest,
    command_origin,
    new_update_id,
    parse_args,
    register_commands,
)
from edge_agent.updates.device import (  # noqa: F401 - re-exported: tools import them from here
    Settings,
    UpdateSettings,
    cli_origin,
    model_loader,
    model_public_key_of,
    selftest_segmenter,
)
from edge_agent.updates.download import DownloadArea, FetchLimits, check_sha256, check_url_text
from edge_agent.updates.durable import kill_point
from edge_agent.updates.state import BUSY, Job, Stage, UpdateState
from edge_agent.updates.store import ModelStore, StoreError, UpdateError
from edge_agent.updates.watch import ServiceWatch, WatchDecision, WatchRules

log = logging.getLogger(__name__)

BUSY_STAGES = tuple(s.value for s in BUSY)
PROGRESS_EVERY_S = 2.0


class UpdateManager:
    """Owns ``<state_dir>/models``, downloads and the audit log; see the module docstring."""

    def __init__(self, cfg: UpdateSettings, load_model: Callable[[Path | None], Any],
                 swap_model: Callable[[Any], None], report: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, public_key: Any = None):
        self.cfg = cfg
        self.ucfg: UpdatesConfig = cfg.updates
        self.model_cfg = cfg.model
        self.state_dir = Path(cfg.state_dir)
        self.load_model = load_model
        self.swap_model = swap_model
        self._report = report
        self.clock = clock
        if public_key is None:
            public_key = model_public_key_of(self.model_cfg)
        self.store = ModelStore(self.state_dir / "models", public_key, self.model_cfg.require_signature)
        self.downloads = DownloadArea(self.state_dir / "downloads")
        self.chunks = ChunkAssembler(self.downloads, self.ucfg.max_bundle_bytes, self.ucfg.chunk_max_bytes,
                                     self.ucfg.transfer_max_age_s, self.ucfg.max_open_transfers,
                                     self.ucfg.transfers_max_bytes)
        self.audit_log = AuditLog(self.state_dir / AUDIT_NAME, self.ucfg.audit_max_bytes)
        self.rules = WatchRules.from_config(self.ucfg)
        self.state = UpdateState(clock)
        self._closing = threading.Event()
        self._worker: threading.Thread | None = None
        self._deferred_reports: list[dict] = []

    # -- state, read-only views (the state machine owns them) --------------------------------
    @property
    def stage(self) -> Stage:
        return self.state.stage

    @property
    def job(self) -> Job | None:
        return self.state.job

    @property
    def watch(self) -> ServiceWatch | None:
        return self.state.watch

    @property
    def last_result(self) -> dict | None:
        return self.state.last_result

    @property
    def configured_model(self) -> Path | None:
        """What runs without an installed model: ``model.path`` (None = the shipped reference)."""
        path = getattr(self.model_cfg, "path", None)
        return Path(path) if path is not None else None

    # -- reporting -------------------------------------------------------------------------
    def _emit(self, stage: Stage, job: Job | None, **fields: Any) -> dict:
        origin = fields.pop("origin") if "origin" in fields else (job.origin if job else None)
        event = {"stage": stage.value, "update_id": job.update_id if job else None, "origin": origin, **fields}
        if job is not None and job.version and "version" not in event:
            event["version"] = job.version
        log.info("model update %s: %s", event.get("update_id"), {k: v for k, v in event.items() if v is not None})
        if self._report is not None:
            try:
                self._report(event)
            except Exception:
                log.exception("could not report update stage %s", stage)
        return event

    def _advance(self, job: Job, stage: Stage, **fields: Any) -> dict:
        self.state.advance(job, stage)
        return self._emit(stage, job, **fields)

    def defer_report(self, event: dict) -> None:
        """A report made before the broker link exists (start-up); sent with the first ``observe()``."""
        self._deferred_reports.append(event)

    def _flush_deferred(self) -> None:
        while self._deferred_reports:
            event = self._deferred_reports.pop(0)
            if self._report is not None:
                try:
                    self._report(event)
                except Exception:
                    log.exception("could not report %s", event)

    def audit(self, record: dict) -> None:
        """The ``CommandRegistry`` audit hook: one line per command received."""
        self.audit_log.write_command(record)

    # -- start-up and commands ---------------------------------------------------------------
    def resolve_startup_model(self) -> Path | None:
        """The installed model to load at start (None: the configured one); see recovery.py."""
        return recovery.resolve_startup_model(self)

    def register_commands(self, registry: Any) -> None:
        """The ``model-*`` commands on the agent's ``CommandRegistry`` (see commands.py)."""
        register_commands(self, registry)

    # -- the update ------------------------------------------------------------------------
    def start(self, job: Job) -> dict:
        """Run ``job`` in a background thread (commands must answer at once); BusyError if busy."""
        fps_before, baseline = self.state.begin(job, closing=self._closing.is_set())
        worker = threading.Thread(target=self._run, args=(job, fps_before, baseline),
                                  name=f"update-{job.update_id}", daemon=True)
        try:
            worker.start()
        except RuntimeError:  # no thread can be started (resources exhausted): not stuck busy
            self.state.finish(None)
            raise
        self._worker = worker
        return {"accepted": True, "update_id": job.update_id, "stage": Stage.DOWNLOADING.value}

    def update(self, url: str, sha256: str, size: int | None = None, version: str | None = None,
               origin: str = "local") -> dict:
        """The whole update of ``url`` in the calling thread (tools, tests); returns the last event."""
        job = Job(update_id=new_update_id(), origin=origin, sha256=check_sha256(sha256), url=check_url_text(url),
                  size=size, version=version)
        fps_before, baseline = self.state.begin(job, closing=self._closing.is_set())
        return self._run(job, fps_before, baseline)

    def _run(self, job: Job, fps_before: float | None, baseline: dict | None) -> dict:
        """The whole update after ``state.begin``; returns the last reported event."""
        folder: Path | None = None
        activated = False
        try:
            self._emit(Stage.DOWNLOADING, job, source=job.describe())
            archive = self._fetch(job)
            kill_point("downloaded")
            self._advance(job, Stage.VERIFYING)
            folder, bundle = self.store.install(archive, self.ucfg.max_bundle_bytes)
            self.downloads.discard(job.sha256)
            self._check_version(job, bundle)
            current = self.store.active()
            if current is not None and current.name == folder.name:
                folder = None  # never delete the running model's folder below
                return self._finish(job, Stage.ACTIVE, note="this bundle is already the active model",
                                    version=bundle.version)
            self._advance(job, Stage.SELFTEST, version=bundle.version, signed=bundle.signed)
            seg = self._load(folder)
            result = selftest_segmenter(seg, bundle)
            self._advance(job, Stage.ACTIVATING, version=bundle.version, selftest=result)
            self._activate(job, folder, bundle, seg, fps_before, baseline)
            activated = True
            return self._emit(Stage.WATCHING, job, version=bundle.version, window_s=self.rules.window_s)
        except UpdateError as exc:
            return self._fail(job, str(exc), folder if not activated else None)
        except Exception as exc:  # a bug must not leave the manager stuck in a busy stage
            log.exception("model update %s failed", job.update_id)
            return self._fail(job, f"internal error: {type(exc).__name__}: {exc}", folder if not activated else None)

    def _fetch(self, job: Job) -> Path:
        if job.path is not None:
            return job.path
        assert job.url is not None
        last = [time.monotonic()]

        def progress(done: int, total: int | None) -> None:
            if self._closing.is_set():
                raise UpdateError("the agent is stopping; the download was abandoned")
            if job.size is None:  # byte counts only up to a size the sender announced: never describe a source
                return
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                self._emit(Stage.DOWNLOADING, job, bytes=done, total=total)

        limits = FetchLimits(self.ucfg.max_bundle_bytes, self.ucfg.download_timeout_s,
                             tuple(self.ucfg.allowed_url_schemes), self.ucfg.file_root)
        return self.downloads.fetch(job.url, job.sha256, limits, size=job.size, progress=progress)

    def _check_version(self, job: Job, bundle: Bundle) -> None:
        if job.version and bundle.version != job.version:
            raise UpdateError(f"the bundle holds version {bundle.version}, the command said {job.version}; refused")
        pinned = getattr(self.model_cfg, "expected_version", None)
        if pinned and bundle.version != pinned:
            raise UpdateError(f"this device is pinned to model version {pinned} (model.expected_version); remove "
                              "the pin to accept other versions over the air")
        job.version = bundle.version

    def _load(self, folder: Path) -> Any:
        try:
            return self.load_model(folder)
        except Exception as exc:
            raise UpdateError(f"the model does not load on this device ({getattr(self.model_cfg, 'backend', '?')}): "
                              f"{exc}") from None

    def _activate(self, job: Job, folder: Path, bundle: Bundle, seg: Any, fps_before: float | None,
                  baseline: dict | None) -> None:
        old = self.store.active()
        self.store.write_pending({"dir": folder.name, "previous": old.name if old else None,
                                  "update_id": job.update_id, "version": bundle.version, "sha256": job.sha256,
                                  "origin": job.origin, "fps_before": fps_before, "started": time.time(),
                                  "restarts": 0})
        kill_point("pending_written")
        try:
            self.store.activate(folder)
        except BaseException:
            self.store.clear_pending()
            raise
        try:
            self.swap_model(seg)
        except Exception as exc:
            self.store.rollback()
            self.store.clear_pending()
            raise UpdateError(f"the agent could not switch to the new model ({exc}); the old one stays") from None
        kill_point("swapped")
        self.state.start_watch(job, ServiceWatch(self.rules, self.clock(), fps_before, baseline))
        self.audit_log.write("model-activate", "watching", job.origin, update_id=job.update_id, dir=folder.name,
                             version=bundle.version, previous=old.name if old else None, sha256=job.sha256,
                             signed=bundle.signed)

    def _fail(self, job: Job, reason: str, installed: Path | None) -> dict:
        if installed is not None:
            self.store.remove_unused(installed)
        self.downloads.discard(job.sha256)
        self.audit_log.write("model-update", "failed", job.origin, update_id=job.update_id,
                             source=job.describe(), version=job.version, reason=reason)
        return self._finish(job, Stage.FAILED, reason=reason)

    def _finish(self, job: Job, stage: Stage, **fields: Any) -> dict:
        self.state.finish(None)
        event = self._emit(stage, job, **fields)
        self.state.record_result(event)
        return event

    # -- in service ------------------------------------------------------------------------
    def observe(self, snapshot: dict) -> WatchDecision:
        """Called periodically with ``PipelineStats.snapshot()``; acts on the watch's decision."""
        self._flush_deferred()
        return self._act(self.state.observe(snapshot))

    def on_inference_error(self, consecutive: int) -> WatchDecision:
        """Called by the inference stage after each failed frame with the count of failures in a row."""
        return self._act(self.state.on_inference_error(int(consecutive)))

    def _act(self, decision: WatchDecision) -> WatchDecision:
        if decision.action == "rollback":
            try:
                self.rollback(decision.reason or "failed in service", origin="watch", automatic=True)
            except UpdateError as exc:
                log.error("automatic rollback failed: %s", exc)
        elif decision.action == "commit":
            self._commit()
        return decision

    def _commit(self) -> None:
        taken = self.state.take_commit()
        if taken is None:
            return
        job, watch = taken
        self.store.clear_pending()
        active = self.store.active()
        removed = self.store.gc(self.ucfg.keep_versions)
        self.audit_log.write("model-confirm", "active", "watch", update_id=job.update_id if job else None,
                             dir=active.name if active else None, version=job.version if job else None,
                             removed=removed)
        event = self._emit(Stage.ACTIVE, job, dir=active.name if active else None,
                           watch=watch.to_dict(self.clock()) if watch else None, removed=removed)
        self.state.record_result(event)

    def rollback(self, reason: str, origin: str = "watch", automatic: bool = True) -> dict:
        """Go back to the previous model (or the configured one): load it, flip links, swap it in.

        If the previous model does not load either, the configured model (``model.path`` or
        the shipped reference) is used and ``active`` removed, so a restart agrees. The
        manager's lock is held only to enter and leave ``rolling_back``: loading the model
        takes seconds, and the health loop must keep answering meanwhile.
        """
        ticket = self.state.begin_rollback(automatic)
        if ticket is None:
            return {"stage": self.state.stage.value, "note": "nothing to roll back"}
        try:
            current, target = self.store.active(), self.store.previous()
            if current is None:
                raise UpdateError("no installed model is active (the configured model runs); nothing to roll back")
            seg, target, errors = self._load_rollback_target(target)
            kill_point("rollback_loaded")
            if target is not None:
                self.store.rollback()
            else:
                self.store.deactivate()
            self.swap_model(seg)
            self.store.clear_pending()
        except BaseException:
            self.state.abort_rollback(ticket)
            raise
        fields: dict[str, Any] = {"reason": reason, "from": current.name,
                                  "to": target.name if target else "configured model"}
        if errors:
            fields["skipped"] = errors
        self.audit_log.write("model-rollback", "rolled_back", origin,
                             update_id=ticket.job.update_id if ticket.job else None, **fields)
        event = self._emit(Stage.ROLLED_BACK, ticket.job, origin=origin, **fields)
        self.state.end_rollback(event)
        return event

    def _load_rollback_target(self, target: Path | None) -> tuple[Any, Path | None, list[str]]:
        """(segmenter, folder or None for the configured model, what did not load); UpdateError if nothing."""
        errors: list[str] = []
        for candidate in ([target, None] if target is not None else [None]):
            try:
                seg = self.load_model(candidate if candidate is not None else self.configured_model)
                return seg, candidate, errors
            except Exception as exc:
                errors.append(f"{candidate.name if candidate else 'the configured model'}: {exc}")
        raise UpdateError(f"cannot roll back, nothing else loads ({'; '.join(errors)}); the current model stays")

    # -- inspection ------------------------------------------------------------------------
    def status(self, include_installed: bool = False) -> dict:
        """For health reports (cheap, never waits for an update) and ``model-status`` (with the installed list)."""
        out: dict[str, Any] = self.state.snapshot()
        try:
            active, prev = self.store.active(), self.store.previous()
            out["active"] = active.name if active else None
            out["previous"] = prev.name if prev else None
        except StoreError as exc:
            out["store_error"] = str(exc)
        if include_installed:
            out["installed"] = [m.to_dict() for m in self.store.list()]
            out["transfers"] = [t.to_dict() for t in self.chunks.open_transfers()]
        return out

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background update (tests, shutdown); True when none is running."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Ask a running download to stop; an install or switch in progress is crash-safe anyway."""
        self._closing.set()
        self.wait(timeout)
