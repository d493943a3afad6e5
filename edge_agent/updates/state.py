"""The update manager's state machine: its stage, the job, the watch, and the one lock over them.

Why a module of its own: the lock must guard state *transitions* only, never work. The agent's
health loop calls ``status()`` and ``observe()`` every second; if the lock were held while a
model loads (a rollback), while a download runs or while files are fsynced, health reports
and the in-service watch would stall for the whole load. So every method here is a short
transition without I/O, and the manager does the slow work between two of them: mark
``rolling_back``, load the old model outside the lock, then commit the switch.

Stages the manager sits in (``Stage.value`` is what reports, audit lines and ``model-status``
say)::

    idle -> downloading -> verifying -> selftest -> activating -> watching -> idle (confirmed)
              any busy stage -> idle (failed, or "already active")   watching -> rolling_back
    idle -> rolling_back (a rollback by command or CLI)    rolling_back -> idle (done)
    idle -> watching (a watch resumed after a restart)     rolling_back -> the stage before (it failed)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from edge_agent.updates.store import UpdateError
from edge_agent.updates.watch import ServiceWatch, WatchDecision
from edge_agent.util.urls import redact_url


class Stage(str, Enum):
    """Update stages. The first seven are states of the manager; the rest only name reported events."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    SELFTEST = "selftest"
    ACTIVATING = "activating"
    WATCHING = "watching"
    ROLLING_BACK = "rolling_back"
    ACTIVE = "active"            # event: the watch window passed, the switch is confirmed
    ROLLED_BACK = "rolled_back"  # event: a rollback completed
    FAILED = "failed"            # event: an update was refused; the running model stayed
    STARTUP = "startup"          # event: a start-up note (fallback, discarded switch)
    DISABLED = "disabled"        # model-status of an agent with updates.enabled false

    def __str__(self) -> str:  # f-strings and logs show "watching", not "Stage.WATCHING"
        return self.value


BUSY = frozenset({Stage.DOWNLOADING, Stage.VERIFYING, Stage.SELFTEST, Stage.ACTIVATING})

# Allowed moves; anything else is a bug in the manager (StateError). Idle is always reachable:
# a failure anywhere must never leave the manager stuck in a busy stage.
_NEXT: dict[Stage, frozenset[Stage]] = {
    Stage.IDLE: frozenset({Stage.DOWNLOADING, Stage.ROLLING_BACK, Stage.WATCHING}),
    Stage.DOWNLOADING: frozenset({Stage.VERIFYING}),
    Stage.VERIFYING: frozenset({Stage.SELFTEST}),
    Stage.SELFTEST: frozenset({Stage.ACTIVATING}),
    Stage.ACTIVATING: frozenset({Stage.WATCHING}),
    Stage.WATCHING: frozenset({Stage.ROLLING_BACK}),
    Stage.ROLLING_BACK: frozenset({Stage.WATCHING}),  # back to watching when the rollback failed
}


class StateError(RuntimeError):
    """A transition the state machine does not allow: a bug, never a user error."""


class BusyError(UpdateError):
    """Another update or rollback is running or being watched; the message says what to wait for."""


@dataclass
class Job:
    """One update: where the archive comes from, what it must be, and who ordered it."""

    update_id: str
    origin: str
    sha256: str
    url: str | None = None
    path: Path | None = None
    size: int | None = None
    version: str | None = None

    def describe(self) -> str:
        return redact_url(self.url) if self.url else f"chunked transfer ({self.sha256[:12]}...)"


@dataclass(frozen=True)
class RollbackTicket:
    """What ``begin_rollback`` saw, so that a failed rollback can restore it."""

    prior: Stage
    job: Job | None
    watch: ServiceWatch | None


class UpdateState:
    """Stage, job, watch and last result of one manager, changed only by short locked transitions."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self._lock = threading.Lock()  # never held across I/O, a model load or a callback
        self._stage = Stage.IDLE
        self._job: Job | None = None
        self._watch: ServiceWatch | None = None
        self._last_result: dict | None = None
        self._last_snapshot: dict | None = None
        self._last_fps: float | None = None

    # -- reads (single attribute reads need no lock) ----------------------------------------
    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def job(self) -> Job | None:
        return self._job

    @property
    def watch(self) -> ServiceWatch | None:
        return self._watch

    @property
    def last_result(self) -> dict | None:
        return self._last_result

    def snapshot(self) -> dict[str, Any]:
        """Stage, update, watch and last result as ``status()`` reports them."""
        with self._lock:
            current = self._job if self._stage is not Stage.IDLE else None
            return {"stage": self._stage.value, "update_id": current.update_id if current else None,
                    "version": current.version if current else None,
                    "watch": self._watch.to_dict(self.clock()) if self._watch else None,
                    "last_result": self._last_result}

    # -- transitions --------------------------------------------------------------------------
    def _move(self, stage: Stage) -> None:
        if stage is not Stage.IDLE and stage not in _NEXT[self._stage]:
            raise StateError(f"update state: {self._stage} -> {stage} is not a valid transition")
        self._stage = stage

    def _refuse_if_busy(self) -> None:
        if self._stage in BUSY:
            raise BusyError(f"an update is already in progress (stage {self._stage}, "
                            f"{self._job.describe() if self._job else '?'}); wait for its result")
        if self._stage is Stage.ROLLING_BACK:
            raise BusyError("a rollback is in progress; send the update when it has finished")
        if self._stage is Stage.WATCHING:
            left = (self._watch.rules.window_s - self._watch.elapsed(self.clock())) if self._watch else 0.0
            raise BusyError(f"the last update is still being watched ({left:.0f} s left); send this one when it "
                            "is confirmed, or roll back first (model-rollback)")

    def begin(self, job: Job, closing: bool = False) -> tuple[float | None, dict | None]:
        """idle -> downloading for ``job``; returns (fps before, counters before) for its watch."""
        with self._lock:
            if closing:
                raise BusyError("the agent is stopping; send the update again after it restarted")
            self._refuse_if_busy()
            self._move(Stage.DOWNLOADING)
            self._job = job
            return self._last_fps, self._last_snapshot

    def advance(self, job: Job, stage: Stage) -> None:
        """The next busy stage of ``job`` (ignored if another job is current: never happens)."""
        with self._lock:
            if self._job is job and self._stage is not stage:
                self._move(stage)

    def start_watch(self, job: Job, watch: ServiceWatch) -> None:
        with self._lock:
            self._move(Stage.WATCHING)
            self._job, self._watch = job, watch

    def resume_watch(self, job: Job, watch: ServiceWatch) -> None:
        """A switch still being watched when the agent restarted (see recovery.py)."""
        with self._lock:
            self._move(Stage.WATCHING)
            self._job, self._watch = job, watch

    def stop_watching(self) -> None:
        with self._lock:
            self._watch = None
            if self._stage is Stage.WATCHING:
                self._move(Stage.IDLE)

    def finish(self, result: dict | None) -> None:
        """Back to idle after an update ended (failed, or nothing to do); ``result`` is remembered."""
        with self._lock:
            self._move(Stage.IDLE)
            if result is not None:
                self._last_result = result

    def record_result(self, result: dict) -> None:
        with self._lock:
            self._last_result = result

    # -- in service ---------------------------------------------------------------------------
    def observe(self, snapshot: dict) -> WatchDecision:
        """The watch's decision on ``snapshot``; while not watching, remember it as the baseline."""
        with self._lock:
            if self._stage is not Stage.WATCHING or self._watch is None:
                self._last_snapshot = dict(snapshot)
                fps = snapshot.get("fps_out")
                if isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0 \
                        and self._stage is Stage.IDLE:
                    self._last_fps = float(fps)
                return WatchDecision("none")
            return self._watch.observe(snapshot, self.clock())

    def on_inference_error(self, consecutive: int) -> WatchDecision:
        with self._lock:
            if self._stage is not Stage.WATCHING or self._watch is None:
                return WatchDecision("none")
            return self._watch.on_inference_error(consecutive, self.clock())

    def take_commit(self) -> tuple[Job | None, ServiceWatch | None] | None:
        """watching -> idle for a confirmation; None when no longer watching (a rollback won)."""
        with self._lock:
            if self._stage is not Stage.WATCHING:
                return None
            job, watch = self._job, self._watch
            self._watch = None
            self._move(Stage.IDLE)
            return job, watch

    # -- rollback: begin (locked), load and switch (unlocked, by the manager), end (locked) -----
    def begin_rollback(self, automatic: bool) -> RollbackTicket | None:
        """-> rolling_back; None when ``automatic`` and nothing is watched any more."""
        with self._lock:
            if automatic and self._stage is not Stage.WATCHING:
                return None
            if self._stage is Stage.ROLLING_BACK:
                raise BusyError("a rollback is already in progress; wait for its result")
            if self._stage in BUSY:
                raise BusyError(f"an update is in progress (stage {self._stage}); roll back after it finished")
            ticket = RollbackTicket(self._stage, self._job if self._stage is Stage.WATCHING else None, self._watch)
            self._move(Stage.ROLLING_BACK)
            return ticket

    def end_rollback(self, result: dict) -> None:
        with self._lock:
            self._move(Stage.IDLE)
            self._watch = None
            self._last_result = result

    def abort_rollback(self, ticket: RollbackTicket) -> None:
        """The rollback failed before switching anything: back to where it started."""
        with self._lock:
            self._move(ticket.prior)
            self._watch = ticket.watch
