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

Restarts: ``pending.json`` marks a switch that is still being watched. If the agent dies
during the window (a crash, the systemd watchdog) it resumes watching after the restart;
after ``max_restarts_while_watching`` restarts the switch is rolled back before the model
is even loaded, so a model that kills the process cannot keep a vehicle in a restart loop.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.bundle import Bundle, BundleError
from edge_agent.comms.base import Command, CommandError
from edge_agent.config.updates import UpdatesConfig
from edge_agent.detectors.selftest import SelftestError, check_segmenter
from edge_agent.updates.audit import AUDIT_NAME, AuditLog
from edge_agent.updates.download import (
    ChunkAssembler,
    DownloadArea,
    FetchLimits,
    TransferError,
    check_sha256,
)
from edge_agent.updates.store import ModelStore, StoreError, UpdateError, kill_point
from edge_agent.updates.watch import ServiceWatch, WatchDecision, WatchRules
from edge_agent.util.urls import redact_url

log = logging.getLogger(__name__)

# Fields a command may carry besides its own arguments (request ids, signature, envelope).
COMMAND_META_KEYS = frozenset({"request_id", "id", "msg_id", "sig", "key_id", "ts", "nonce", "schema_version",
                               "seq", "device_id", "sent_ts"})
BUSY_STAGES = ("downloading", "verifying", "selftest", "activating")
PROGRESS_EVERY_S = 2.0


class UpdateSettings(Protocol):
    """What the manager reads from the agent config (``AgentConfig`` has all three)."""

    updates: UpdatesConfig
    model: Any  # ModelConfig
    state_dir: Path


@dataclass(frozen=True)
class Settings:
    """A plain ``UpdateSettings`` for tools and tests that have no full agent config."""

    updates: UpdatesConfig
    model: Any
    state_dir: Path


class UpdateRequest(BaseModel):
    """The ``model-update`` command: where the archive is and what it must be."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    sha256: str
    size: int | None = Field(None, ge=1)
    version: str | None = Field(None, min_length=1)


class ChunkRequest(BaseModel):
    """One ``model-chunk`` command; ``sha256`` is that of the whole archive."""

    model_config = ConfigDict(extra="forbid")

    transfer_id: str
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    sha256: str
    data: str
    version: str | None = Field(None, min_length=1)


def parse_args(model: type[BaseModel], cmd: Command) -> Any:
    """Validate a command's JSON object (meta fields removed) into ``model``, or a CommandError."""
    args = {k: v for k, v in cmd.args.items() if k not in COMMAND_META_KEYS}
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise CommandError(f"{cmd.name}: '{where}': {err['msg']}") from None


def command_origin(cmd: Command) -> str:
    """Who sent it, as far as the device can tell: the signing key id, else the topic (as the
    command audit records of ``CommandRegistry`` say it)."""
    key_id = cmd.args.get("key_id")
    return key_id if isinstance(key_id, str) and key_id else cmd.topic


def cli_origin() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no passwd entry (containers)
        return f"cli:uid{os.getuid()}"


def model_loader(model_cfg: Any, environ: Mapping[str, str] | None = None) -> Callable[[Path | None], Any]:
    """``load_model`` as the agent does it (backend, threads, providers, key, precision, threshold).

    For the CLI and tools; the agent passes its own ``Agent.load_model``.
    """
    from edge_agent.config.loader import model_public_key
    from edge_agent.detectors.runtime import open_model

    public_key = model_public_key(model_cfg, environ) if (model_cfg.public_key_file
                                                          or model_cfg.public_key_credential) else None

    def load(path: Path | None):
        return open_model(path, backend=model_cfg.backend, threads=model_cfg.threads,
                          providers=model_cfg.onnx_providers(), public_key=public_key,
                          require_signature=model_cfg.require_signature, precision=model_cfg.precision,
                          threshold=model_cfg.threshold)

    return load


def selftest_segmenter(seg: Any, bundle: Bundle) -> dict:
    """The selftest of the segmenter about to be swapped in, as an UpdateError when it fails."""
    try:
        return check_segmenter(seg, bundle).to_dict()
    except (SelftestError, BundleError) as exc:
        raise UpdateError(str(exc)) from None


@dataclass
class _Job:
    update_id: str
    origin: str
    sha256: str
    url: str | None = None
    path: Path | None = None
    size: int | None = None
    version: str | None = None

    def describe(self) -> str:
        return redact_url(self.url) if self.url else f"chunked transfer ({self.sha256[:12]}...)"


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
        if public_key is None and (self.model_cfg.public_key_file or self.model_cfg.public_key_credential):
            from edge_agent.config.loader import model_public_key

            public_key = model_public_key(self.model_cfg)
        self.store = ModelStore(self.state_dir / "models", public_key, self.model_cfg.require_signature)
        self.downloads = DownloadArea(self.state_dir / "downloads")
        self.chunks = ChunkAssembler(self.downloads, self.ucfg.max_bundle_bytes, self.ucfg.chunk_max_bytes,
                                     self.ucfg.transfer_max_age_s)
        self.audit_log = AuditLog(self.state_dir / AUDIT_NAME, self.ucfg.audit_max_bytes)
        self.rules = WatchRules.from_config(self.ucfg)
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._worker: threading.Thread | None = None
        self.stage = "idle"
        self.job: _Job | None = None
        self.watch: ServiceWatch | None = None
        self.last_result: dict | None = None
        self._last_snapshot: dict | None = None
        self._last_fps: float | None = None
        self._deferred_reports: list[dict] = []

    @property
    def configured_model(self) -> Path | None:
        """What runs without an installed model: ``model.path`` (None = the shipped reference)."""
        path = getattr(self.model_cfg, "path", None)
        return Path(path) if path is not None else None

    # -- reporting -------------------------------------------------------------------------
    def _emit(self, stage: str, job: _Job | None, **fields: Any) -> dict:
        event = {"stage": stage, "update_id": job.update_id if job else None,
                 "origin": job.origin if job else fields.pop("origin", None), **fields}
        if job is not None and job.version and "version" not in event:
            event["version"] = job.version
        log.info("model update %s: %s", event.get("update_id"), {k: v for k, v in event.items() if v is not None})
        if self._report is not None:
            try:
                self._report(event)
            except Exception:
                log.exception("could not report update stage %s", stage)
        return event

    def _set_stage(self, stage: str, job: _Job | None, **fields: Any) -> dict:
        with self._lock:
            self.stage = stage
        return self._emit(stage, job, **fields)

    def audit(self, record: dict) -> None:
        """The ``CommandRegistry`` audit hook: one line per command received."""
        self.audit_log.write_command(record)

    # -- start-up --------------------------------------------------------------------------
    def resolve_startup_model(self) -> Path | None:
        """The installed model to load at start: active if valid, else previous, else None.

        None means the configured model (``model.path``, or the shipped reference bundle).
        Also removes what an interrupted update left behind and handles a pending switch.
        """
        try:
            self.store.cleanup_temp()
            self.downloads.cleanup_partial()
            self.chunks.cleanup_stale()
            self._handle_pending_at_start()
            return self._usable_installed()
        except StoreError as exc:  # e.g. a hand-made 'active' that is not a link: run the configured model
            self._note_startup("model store unusable", reason=str(exc))
            return None

    def _usable_installed(self) -> Path | None:
        active = self.store.active()
        if active is not None:
            try:
                self.store.verify(active)
                return active
            except StoreError as exc:
                self._note_startup("active model unusable", reason=str(exc), dir=active.name)
                self._stop_watching()  # a resumed watch was about this unusable model
        previous = self.store.previous()
        if previous is None:
            return None
        try:
            self.store.verify(previous)
        except StoreError as exc:
            self._note_startup("previous model unusable", reason=str(exc), dir=previous.name)
            return None
        if active is not None:
            self.store.rollback()  # make the links say what runs
        self._note_startup("fell back to the previous model", dir=previous.name)
        return previous

    def _stop_watching(self) -> None:
        self.store.clear_pending()
        with self._lock:
            self.watch = None
            self.stage = "idle"

    def _handle_pending_at_start(self) -> None:
        pending = self.store.read_pending()
        if pending is None:
            return
        active = self.store.active()
        if active is None or active.name != pending["dir"]:
            self.store.clear_pending()  # the switch never completed: the old model is still active
            self._note_startup("unfinished switch discarded", dir=pending["dir"],
                               update_id=pending.get("update_id"))
            return
        restarts = int(pending.get("restarts", 0)) + 1
        if restarts >= self.ucfg.max_restarts_while_watching:
            reason = (f"the agent restarted {restarts} times within the watch window of {pending['dir']} "
                      "(crash or watchdog)")
            now_active = self.store.rollback()
            self.store.clear_pending()
            result = {"stage": "rolled_back", "update_id": pending.get("update_id"), "reason": reason,
                      "from": pending["dir"], "to": now_active.name if now_active else "configured model",
                      "origin": "watch"}
            self.last_result = result
            self.audit_log.write("model-rollback", "rolled_back", "watch", **{k: v for k, v in result.items()
                                                                              if k not in ("origin",)})
            self._deferred_reports.append(result)
            return
        pending["restarts"] = restarts
        self.store.write_pending(pending)
        with self._lock:
            self.stage = "watching"
            self.job = _Job(update_id=pending.get("update_id") or "resumed", origin=pending.get("origin", "unknown"),
                            sha256=pending.get("sha256", ""), version=pending.get("version"))
            self.watch = ServiceWatch(self.rules, self.clock(), pending.get("fps_before"))
        self._deferred_reports.append({"stage": "watching", "update_id": self.job.update_id,
                                       "version": self.job.version, "resumed_after_restart": restarts,
                                       "origin": self.job.origin})

    def _note_startup(self, what: str, **fields: Any) -> None:
        log.warning("model store: %s %s", what, fields)
        self.audit_log.write("model-startup", what, "agent", **fields)
        self._deferred_reports.append({"stage": "startup", "note": what, **fields})

    def _flush_deferred(self) -> None:
        """Reports made before the broker link existed (start-up) go out with the first observe()."""
        while self._deferred_reports:
            event = self._deferred_reports.pop(0)
            if self._report is not None:
                try:
                    self._report(event)
                except Exception:
                    log.exception("could not report %s", event)

    # -- commands --------------------------------------------------------------------------
    def register_commands(self, registry: Any) -> None:
        registry.register("model-update", self.handle_update_command)
        registry.register("model-chunk", self.handle_chunk_command)
        registry.register("model-rollback", self.handle_rollback_command)
        registry.register("model-status", lambda cmd: self.status(include_installed=True))

    def handle_update_command(self, cmd: Command) -> dict:
        req = parse_args(UpdateRequest, cmd)
        try:
            sha = check_sha256(req.sha256)
        except UpdateError as exc:
            raise CommandError(str(exc)) from None
        job = _Job(update_id=uuid.uuid4().hex[:12], origin=command_origin(cmd), sha256=sha, url=req.url,
                   size=req.size, version=req.version)
        return self.start(job)

    def handle_chunk_command(self, cmd: Command) -> dict:
        req = parse_args(ChunkRequest, cmd)
        try:
            data = base64.b64decode(req.data, validate=True)
        except (binascii.Error, ValueError):
            raise CommandError("model-chunk: 'data' is not base64") from None
        try:
            progress = self.chunks.add(req.transfer_id, req.index, req.count, req.sha256, data)
        except (TransferError, UpdateError) as exc:
            raise CommandError(str(exc)) from None
        result = progress.to_dict()
        if progress.complete is None:
            return result
        job = _Job(update_id=uuid.uuid4().hex[:12], origin=command_origin(cmd), sha256=req.sha256.lower(),
                   path=progress.complete, version=req.version)
        try:
            result["update"] = self.start(job)
        except CommandError as exc:
            raise CommandError(f"all {progress.count} chunks received and the archive verified, but {exc}; "
                               "resend any chunk of this transfer later to start the update") from None
        return result

    def handle_rollback_command(self, cmd: Command) -> dict:
        try:
            return self.rollback("requested by command", origin=command_origin(cmd), automatic=False)
        except UpdateError as exc:
            raise CommandError(str(exc)) from None

    # -- the update ------------------------------------------------------------------------
    def start(self, job: _Job) -> dict:
        """Run ``job`` in a background thread (commands must answer at once); CommandError if busy."""
        with self._lock:
            if self._closing.is_set():
                raise CommandError("the agent is stopping; send the update again after it restarted")
            if self.stage in BUSY_STAGES:
                raise CommandError(f"an update is already in progress (stage {self.stage}, "
                                   f"{self.job.describe() if self.job else '?'}); wait for its result")
            if self.stage == "watching" and self.watch is not None:
                left = self.rules.window_s - self.watch.elapsed(self.clock())
                raise CommandError(f"the last update is still being watched ({left:.0f} s left); send this one "
                                   "when it is confirmed, or roll back first (model-rollback)")
            self.stage = "downloading"
            self.job = job
            self._worker = threading.Thread(target=self.run, args=(job,), name=f"update-{job.update_id}",
                                            daemon=True)
            self._worker.start()
        return {"accepted": True, "update_id": job.update_id, "stage": "downloading"}

    def update(self, url: str, sha256: str, size: int | None = None, version: str | None = None,
               origin: str = "local") -> dict:
        """The whole update of ``url`` in the calling thread (tools, tests); returns the last event."""
        job = _Job(update_id=uuid.uuid4().hex[:12], origin=origin, sha256=check_sha256(sha256), url=url, size=size,
                   version=version)
        with self._lock:
            if self.stage in BUSY_STAGES or self.stage == "watching":
                raise UpdateError(f"busy: stage {self.stage}")
        return self.run(job)

    def run(self, job: _Job) -> dict:
        """The whole update in the calling thread; returns the last reported event."""
        with self._lock:
            self.stage, self.job = "downloading", job
            fps_before, baseline = self._last_fps, self._last_snapshot
        folder: Path | None = None
        activated = False
        try:
            self._set_stage("downloading", job, source=job.describe())
            archive = self._fetch(job)
            kill_point("downloaded")
            self._set_stage("verifying", job)
            folder, bundle = self.store.install(archive, self.ucfg.max_bundle_bytes)
            self.downloads.discard(job.sha256)
            self._check_version(job, bundle)
            current = self.store.active()
            if current is not None and current.name == folder.name:
                folder = None  # never delete the running model's folder below
                return self._finish(job, "active", note="this bundle is already the active model",
                                    version=bundle.version)
            self._set_stage("selftest", job, version=bundle.version, signed=bundle.signed)
            seg = self._load(folder)
            result = selftest_segmenter(seg, bundle)
            self._set_stage("activating", job, version=bundle.version, selftest=result)
            self._activate(job, folder, bundle, seg, fps_before, baseline)
            activated = True
            return self._emit("watching", job, version=bundle.version, window_s=self.rules.window_s)
        except (UpdateError, CommandError) as exc:
            return self._fail(job, str(exc), folder if not activated else None)
        except Exception as exc:  # a bug must not leave the manager stuck in a busy stage
            log.exception("model update %s failed", job.update_id)
            return self._fail(job, f"internal error: {type(exc).__name__}: {exc}", folder if not activated else None)

    def _fetch(self, job: _Job) -> Path:
        if job.path is not None:
            return job.path
        assert job.url is not None
        last = [time.monotonic()]

        def progress(done: int, total: int | None) -> None:
            if self._closing.is_set():
                raise UpdateError("the agent is stopping; the download was abandoned")
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                self._emit("downloading", job, bytes=done, total=total)

        limits = FetchLimits(self.ucfg.max_bundle_bytes, self.ucfg.download_timeout_s,
                             tuple(self.ucfg.allowed_url_schemes))
        return self.downloads.fetch(job.url, job.sha256, limits, size=job.size, progress=progress)

    def _check_version(self, job: _Job, bundle: Bundle) -> None:
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

    def _activate(self, job: _Job, folder: Path, bundle: Bundle, seg: Any, fps_before: float | None,
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
        with self._lock:
            self.watch = ServiceWatch(self.rules, self.clock(), fps_before, baseline)
            self.stage = "watching"
        self.audit_log.write("model-activate", "watching", job.origin, update_id=job.update_id, dir=folder.name,
                             version=bundle.version, previous=old.name if old else None, sha256=job.sha256,
                             signed=bundle.signed)

    def _fail(self, job: _Job, reason: str, installed: Path | None) -> dict:
        if installed is not None:
            self._remove_unused(installed)
        self.downloads.discard(job.sha256)
        self.audit_log.write("model-update", "failed", job.origin, update_id=job.update_id,
                             source=job.describe(), version=job.version, reason=reason)
        return self._finish(job, "failed", reason=reason)

    def _finish(self, job: _Job, stage: str, **fields: Any) -> dict:
        with self._lock:
            self.stage = "idle"
        event = self._emit(stage, job, **fields)
        with self._lock:
            self.last_result = event
        return event

    def _remove_unused(self, folder: Path) -> None:
        with self.store.lock():
            keep = {p.name for p in (self.store.active(), self.store.previous()) if p is not None}
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    # -- in service ------------------------------------------------------------------------
    def observe(self, snapshot: dict) -> WatchDecision:
        """Called periodically with ``PipelineStats.snapshot()``; acts on the watch's decision."""
        self._flush_deferred()
        with self._lock:
            watch = self.watch if self.stage == "watching" else None
            if watch is None:
                self._last_snapshot = dict(snapshot)
                fps = snapshot.get("fps_out")
                if isinstance(fps, (int, float)) and fps > 0 and self.stage == "idle":
                    self._last_fps = float(fps)
                return WatchDecision("none")
            decision = watch.observe(snapshot, self.clock())
        return self._act(decision)

    def on_inference_error(self, consecutive: int) -> WatchDecision:
        """Called by the inference stage after each failed frame with the count of failures in a row."""
        with self._lock:
            watch = self.watch if self.stage == "watching" else None
            if watch is None:
                return WatchDecision("none")
            decision = watch.on_inference_error(int(consecutive), self.clock())
        return self._act(decision)

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
        with self._lock:
            if self.stage != "watching":
                return
            job, watch = self.job, self.watch
            self.watch = None
            self.stage = "idle"
        self.store.clear_pending()
        active = self.store.active()
        removed = self.store.gc(self.ucfg.keep_versions)
        self.audit_log.write("model-confirm", "active", "watch", update_id=job.update_id if job else None,
                             dir=active.name if active else None, version=job.version if job else None,
                             removed=removed)
        event = self._emit("active", job, dir=active.name if active else None,
                           watch=watch.to_dict(self.clock()) if watch else None, removed=removed)
        with self._lock:
            self.last_result = event

    def rollback(self, reason: str, origin: str = "watch", automatic: bool = True) -> dict:
        """Go back to the previous model (or the configured one): load it, flip links, swap it in.

        If the previous model does not load either, the configured model (``model.path`` or
        the shipped reference) is used and ``active`` removed, so a restart agrees.
        """
        with self._lock:
            if automatic and self.stage != "watching":
                return {"stage": self.stage, "note": "nothing to roll back"}
            if self.stage in BUSY_STAGES:
                raise UpdateError(f"an update is in progress (stage {self.stage}); roll back after it finished")
            job = self.job if self.stage == "watching" else None
            current, target = self.store.active(), self.store.previous()
            if current is None:
                raise UpdateError("no installed model is active (the configured model runs); nothing to roll back")
            seg, errors = None, []
            for candidate in ([target, None] if target is not None else [None]):
                try:
                    seg = self.load_model(candidate if candidate is not None else self.configured_model)
                    target = candidate
                    break
                except Exception as exc:
                    errors.append(f"{candidate.name if candidate else 'the configured model'}: {exc}")
            if seg is None:
                raise UpdateError(f"cannot roll back, nothing else loads ({'; '.join(errors)}); the current model "
                                  "stays")
            kill_point("rollback_loaded")
            if target is not None:
                self.store.rollback()
            else:
                self.store.deactivate()
            self.swap_model(seg)
            self.store.clear_pending()
            self.watch = None
            self.stage = "idle"
            fields = {"reason": reason, "from": current.name, "to": target.name if target else "configured model"}
            if errors:
                fields["skipped"] = errors
        self.audit_log.write("model-rollback", "rolled_back", origin, update_id=job.update_id if job else None,
                             **fields)
        event = self._emit("rolled_back", job, origin=origin, **fields)
        with self._lock:
            self.last_result = event
        return event

    # -- inspection ------------------------------------------------------------------------
    def status(self, include_installed: bool = False) -> dict:
        """For health reports (cheap) and the ``model-status`` command (with the installed list)."""
        with self._lock:
            out: dict[str, Any] = {"stage": self.stage,
                                   "update_id": self.job.update_id if self.job and self.stage != "idle" else None,
                                   "version": self.job.version if self.job and self.stage != "idle" else None,
                                   "watch": self.watch.to_dict(self.clock()) if self.watch else None,
                                   "last_result": self.last_result}
        try:
            active, prev = self.store.active(), self.store.previous()
            out["active"] = active.name if active else None
            out["previous"] = prev.name if prev else None
        except StoreError as exc:
            out["store_error"] = str(exc)
        if include_installed:
            out["installed"] = [m.to_dict() for m in self.store.list()]
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
