"""The update manager's state machine and its lock: the health loop never waits for a model load.

``status()`` and ``observe()`` run every second on the agent's health thread. A rollback loads
a model (seconds on a Pi, minutes if the disk is slow); these tests hold that load on an Event
and check, by events rather than by timing, that the health calls return meanwhile and see
the ``rolling_back`` stage. The store here is two plain folders and hand-made links: no
bundle is verified on a rollback, so no real model is needed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from edge_agent.config.sections import ModelConfig
from edge_agent.config.updates import UpdatesConfig
from edge_agent.updates.manager import Settings, UpdateManager

FAILSAFE_S = 30.0  # only bounds a hang; a correct manager answers long before


class FakeModel:
    def __init__(self, path: Path | None) -> None:
        self.path = path


class SlowLoader:
    """``load_model`` that blocks until ``release`` is set, announcing the wait with ``loading``."""

    def __init__(self) -> None:
        self.loading = threading.Event()
        self.release = threading.Event()

    def __call__(self, path: Path | None) -> FakeModel:
        self.loading.set()
        if not self.release.wait(FAILSAFE_S):
            raise RuntimeError("the test never released the loader")
        return FakeModel(path)


def fake_store(state: Path) -> None:
    """models/old and models/new, active -> new, previous -> old."""
    models = state / "models"
    for name in ("old-1.0.0-aaaaaaaa", "new-2.0.0-bbbbbbbb"):
        (models / name).mkdir(parents=True)
    os.symlink("new-2.0.0-bbbbbbbb", models / "active")
    os.symlink("old-1.0.0-aaaaaaaa", models / "previous")


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, threading.Event, dict]:
    done, out = threading.Event(), {}

    def run() -> None:
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done, out


@pytest.fixture
def slow(tmp_path) -> tuple[UpdateManager, SlowLoader, list]:
    fake_store(tmp_path)
    loader, swapped, events = SlowLoader(), [], []
    m = UpdateManager(Settings(UpdatesConfig(enabled=True), ModelConfig(), tmp_path), load_model=loader,
                      swap_model=swapped.append, report=events.append)
    return m, loader, swapped


def test_status_and_observe_answer_while_a_rollback_loads_a_model(slow) -> None:
    m, loader, swapped = slow
    rollback, rolled, out = in_thread(m.rollback, "requested by test", origin="cli:test", automatic=False)
    try:
        assert loader.loading.wait(FAILSAFE_S), "the rollback never started loading"
        # the load is in progress and cannot finish until we release it
        _, status_done, status = in_thread(m.status)
        assert status_done.wait(FAILSAFE_S), "status() waited for the rollback's model load"
        assert not loader.release.is_set() and not rolled.is_set()
        assert status["result"]["stage"] == "rolling_back"
        _, observed, decision = in_thread(m.observe, {"fps_out": 5.0})
        assert observed.wait(FAILSAFE_S), "observe() waited for the rollback's model load"
        assert decision["result"].action == "none"
        _, errored, _ = in_thread(m.on_inference_error, 3)
        assert errored.wait(FAILSAFE_S), "on_inference_error() waited for the rollback's model load"
        # a second rollback or an update is refused at once, not queued behind the lock
        _, again_done, again = in_thread(m.rollback, "twice", origin="cli:test", automatic=False)
        assert again_done.wait(FAILSAFE_S)
        assert "roll" in str(again.get("error", ""))
    finally:
        loader.release.set()
    assert rolled.wait(FAILSAFE_S) and "error" not in out, out
    assert out["result"]["stage"] == "rolled_back" and out["result"]["to"] == "old-1.0.0-aaaaaaaa"
    assert [s.path.name for s in swapped] == ["old-1.0.0-aaaaaaaa"]
    after = m.status()
    assert after["stage"] == "idle" and after["active"] == "old-1.0.0-aaaaaaaa"
    assert after["last_result"]["stage"] == "rolled_back"
    rollback.join(FAILSAFE_S)


def test_a_failed_rollback_load_restores_the_previous_stage(tmp_path) -> None:
    fake_store(tmp_path)

    def broken(path: Path | None) -> FakeModel:
        raise RuntimeError(f"cannot load {path}")

    m = UpdateManager(Settings(UpdatesConfig(enabled=True), ModelConfig(), tmp_path), load_model=broken,
                      swap_model=lambda seg: None)
    with pytest.raises(Exception, match="cannot roll back, nothing else loads"):
        m.rollback("test", origin="cli:test", automatic=False)
    status = m.status()
    assert status["stage"] == "idle" and status["active"] == "new-2.0.0-bbbbbbbb"  # links untouched
