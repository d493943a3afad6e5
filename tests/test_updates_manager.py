"""UpdateManager end to end with real bundles, real models, a real HTTP server and a real broker:
good updates become active (file://, http://, chunks over MQTT); bad ones are refused with a
reason while the running model keeps running; a model that fails on the road is rolled back.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent.commands import CommandRegistry
from edge_agent.agent.pipeline import ModelSlot
from edge_agent.comms.base import Command, CommandError
from edge_agent.config.sections import ModelConfig
from edge_agent.config.updates import UpdatesConfig
from edge_agent.updates.audit import AuditLog
from edge_agent.updates.commands import UpdateCommands
from edge_agent.updates.manager import Settings, UpdateManager, model_loader
from edge_agent.updates.watch import ServiceWatch, WatchRules
from tests.bundles import (
    SERVICE_HW,
    build_archive,
    flip_byte,
    sha256_of,
    tiny_onnx,
)


class Clock:
    """Monotonic time the test advances by hand (the watch rules take ``now`` from it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A manager wired like the agent wires it: a model slot, reports collected, real loading.

    file:// URLs are allowed below ``file_root`` (pytest's base temp folder, set by a fixture).
    """

    file_root: Path | None = None

    def __init__(self, state: Path, public_key: Path, *, require_signature: bool = True, **updates):
        updates.setdefault("enabled", True)
        updates.setdefault("allowed_url_schemes", ["https", "http", "file"])
        updates.setdefault("file_root", self.file_root)
        updates.setdefault("watch_window_s", 60.0)
        updates.setdefault("fps_settle_s", 20.0)
        self.settings = Settings(updates=UpdatesConfig(**updates),
                                 model=ModelConfig(path=tiny_onnx(5), public_key_file=public_key,
                                                   require_signature=require_signature, threads=1),
                                 state_dir=state)
        self.clock = Clock()
        self.events: list[dict] = []
        self.load = model_loader(self.settings.model)
        self.manager = UpdateManager(self.settings, load_model=self.load, swap_model=self.swap,
                                     report=self.events.append, clock=self.clock)
        start = self.manager.resolve_startup_model()  # None: the configured model
        self.slot = ModelSlot(self.load(start or self.settings.model.path))

    def swap(self, seg) -> None:  # noqa: ANN001
        self.slot.swap(seg)

    @property
    def version(self) -> str:
        return self.slot.get().info.version

    def stages(self) -> list[str]:
        return [e["stage"] for e in self.events]

    def update(self, url: str, sha256: str, verified_key_id: str | None = None, **extra) -> dict:
        cmd = Command("model-update", {"url": url, "sha256": sha256, **extra}, "crackseg/van-1/cmd/model-update",
                      verified_key_id=verified_key_id)
        accepted = UpdateCommands(self.manager).update(cmd)
        assert accepted["accepted"]
        assert self.manager.wait(60)
        return self.events[-1]


@pytest.fixture(autouse=True)
def _file_root(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setattr(Harness, "file_root", tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def archives(tmp_path_factory, keys) -> dict[str, Path]:
    key, _ = keys
    folder = tmp_path_factory.mktemp("archives")
    return {"1.0.0": build_archive(folder, "1.0.0", key=key),
            "2.0.0": build_archive(folder, "2.0.0", key=key, onnx=tiny_onnx(2)),
            "unsigned": build_archive(folder, "2.1.0", onnx=tiny_onnx(2)),
            "wrong-expected": build_archive(folder, "2.2.0", key=key, wrong_expected=True),
            "road-failure": build_archive(folder, "2.3.0", key=key, onnx=tiny_onnx(0, fixed_reshape=True))}


@pytest.fixture
def harness(tmp_path, keys, archives) -> Harness:
    """A device running 1.0.0 from its model store."""
    h = Harness(tmp_path / "state", keys[1])
    assert h.update(archives["1.0.0"].as_uri(), sha256_of(archives["1.0.0"]))["stage"] == "watching"
    h.clock.now += 61
    assert h.manager.observe({"fps_out": 10.0}).action == "commit"
    assert h.version == "1.0.0" and h.manager.stage == "idle"
    h.events.clear()
    return h


def audit_events(h: Harness) -> list[tuple[str, str]]:
    return [(r["event"], r["outcome"]) for r in AuditLog(h.settings.state_dir / "audit.jsonl").entries()]


# -- good updates -------------------------------------------------------------------------------
def test_file_url_update_is_checked_switched_watched_and_confirmed(harness: Harness, archives) -> None:
    h = harness
    h.manager.observe({"fps_out": 10.0, "frames_processed": 100, "inference_errors": 0})
    last = h.update(archives["2.0.0"].as_uri(), sha256_of(archives["2.0.0"]), version="2.0.0")
    assert last["stage"] == "watching" and last["version"] == "2.0.0"
    assert h.stages() == ["downloading", "verifying", "selftest", "activating", "watching"]
    selftest = next(e for e in h.events if e["stage"] == "activating")["selftest"]
    assert selftest["backend"] == "onnx" and selftest["max_abs"] <= selftest["max_abs_allowed"]
    assert h.version == "2.0.0"
    store = h.manager.store
    assert store.active().name.startswith("tiny-2.0.0-") and store.previous().name.startswith("tiny-1.0.0-")
    assert store.read_pending()["fps_before"] == 10.0
    assert list((h.settings.state_dir / "downloads").glob("*")) == []  # the archive is not kept
    # in service: healthy numbers, then the window ends
    h.clock.now += 30
    assert h.manager.observe({"fps_out": 9.0, "frames_processed": 400, "inference_errors": 0}).action == "watching"
    assert h.manager.status()["stage"] == "watching"
    h.clock.now += 31
    assert h.manager.observe({"fps_out": 9.5, "frames_processed": 700, "inference_errors": 0}).action == "commit"
    assert h.events[-1]["stage"] == "active" and store.read_pending() is None
    assert h.manager.status()["last_result"]["stage"] == "active"
    assert ("model-activate", "watching") in audit_events(h) and ("model-confirm", "active") in audit_events(h)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture
def http_server(archives):
    folder = archives["1.0.0"].parent
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_download_update_and_http_failures(harness: Harness, archives, http_server) -> None:
    h = harness
    name = archives["2.0.0"].name
    missing = h.update(f"{http_server}/nope.tar.gz", sha256_of(archives["2.0.0"]))
    assert missing["stage"] == "failed" and "HTTP 404" in missing["reason"] and h.version == "1.0.0"
    small = Harness(h.settings.state_dir.parent / "small", h.settings.model.public_key_file,
                    max_bundle_bytes=10_000, chunk_max_bytes=1000)
    too_big = small.update(f"{http_server}/{name}", sha256_of(archives["2.0.0"]))
    assert too_big["stage"] == "failed" and "max_bundle_bytes" in too_big["reason"]
    h.events.clear()
    last = h.update(f"{http_server}/{name}?token=secret", sha256_of(archives["2.0.0"]))
    assert last["stage"] == "watching" and h.version == "2.0.0"
    assert "secret" not in json.dumps(h.events)  # query strings (pre-signed tokens) are not reported


# -- refusals: the running model keeps running -------------------------------------------------
def _tampered(archives, tmp_path: Path) -> tuple[Path, str]:
    """The 2.0.0 bundle with one model byte changed, repacked: its archive hash is announced correctly."""
    import tarfile

    out = tmp_path / "tampered"
    with tarfile.open(archives["2.0.0"]) as tf:
        tf.extractall(out, filter="data")
    top = next(out.iterdir())
    flip_byte(top / "model-fp32.onnx")
    from edge_agent.bundle import pack_archive

    archive = pack_archive(top, tmp_path / "tampered.tar.gz")
    return archive, sha256_of(archive)


def _truncated(archives, tmp_path: Path) -> tuple[Path, str, int]:
    data = archives["2.0.0"].read_bytes()
    path = tmp_path / "truncated.tar.gz"
    path.write_bytes(data[: len(data) - 100])
    return path, sha256_of(archives["2.0.0"]), len(data)


@pytest.mark.parametrize("case, reason", [
    ("tampered", "sha256 does not match the manifest"),
    ("truncated", "no readable regular file with the announced sha256 (and size)"),  # says nothing more
    ("wrong-sha256", "no readable regular file with the announced sha256 (and size)"),
    ("unsigned", "not signed"),
    ("wrong-expected", "selftest failed"),
    ("version-mismatch", "the command said 9.0.0"),
    ("scheme", "not allowed on this device"),
])
def test_bad_updates_are_refused_and_the_running_model_stays(harness: Harness, archives, tmp_path, case,
                                                              reason) -> None:
    h = harness
    running, active = h.slot.get(), h.manager.store.active()
    dirs_before = {d.name for d in h.manager.store.model_dirs()}
    extra: dict = {}
    url, sha = archives["2.0.0"].as_uri(), sha256_of(archives["2.0.0"])
    if case == "tampered":
        path, sha = _tampered(archives, tmp_path)
        url = path.as_uri()
    elif case == "truncated":
        path, sha, size = _truncated(archives, tmp_path)
        url, extra = path.as_uri(), {"size": size}
    elif case == "wrong-sha256":
        sha = "0" * 64
    elif case in ("unsigned", "wrong-expected"):
        url, sha = archives[case].as_uri(), sha256_of(archives[case])
    elif case == "version-mismatch":
        extra = {"version": "9.0.0"}
    elif case == "scheme":
        h = Harness(tmp_path / "https-only", h.settings.model.public_key_file, allowed_url_schemes=["https"])
        running, active, dirs_before = h.slot.get(), h.manager.store.active(), set()
    last = h.update(url, sha, **extra)
    assert last["stage"] == "failed" and reason in last["reason"], last
    assert h.slot.get() is running and h.manager.store.active() == active
    assert {d.name for d in h.manager.store.model_dirs()} == dirs_before
    assert list((h.settings.state_dir / "downloads").glob("*.*")) == []
    assert audit_events(h)[-1] == ("model-update", "failed")
    assert h.manager.status()["stage"] == "idle"


def test_malformed_commands_are_refused_at_once(harness: Harness) -> None:
    m = harness.manager
    for args, match in [({"sha256": "0" * 64}, "'url': Field required"),
                        ({"url": "file:///x", "sha256": "abc"}, "64 hex digits"),
                        ({"url": "file:///x", "sha256": "0" * 64, "colour": "red"}, "'colour': Extra inputs")]:
        with pytest.raises(CommandError, match=match):
            UpdateCommands(m).update(Command("model-update", args, "crackseg/van-1/cmd/model-update"))
    assert harness.events == []


# -- in service -----------------------------------------------------------------------------------
def test_model_failing_on_the_road_is_rolled_back_automatically(harness: Harness, archives) -> None:
    h = harness
    old_model = h.slot.get()
    h.manager.observe({"fps_out": 10.0, "frames_processed": 50, "inference_errors": 0})
    last = h.update(archives["road-failure"].as_uri(), sha256_of(archives["road-failure"]))
    assert last["stage"] == "watching" and h.version == "2.3.0"  # it passed its self-test
    frame = np.random.default_rng(1).integers(0, 255, (*SERVICE_HW, 3), dtype=np.uint8)
    consecutive = 0
    for _ in range(20):  # what the agent's inference stage does with each frame
        try:
            h.slot.get().probabilities(frame)
            consecutive = 0
        except Exception:
            consecutive += 1
            h.manager.on_inference_error(consecutive)
        if h.manager.stage != "watching":
            break
    assert consecutive == h.settings.updates.max_consecutive_inference_errors
    assert h.version == "1.0.0" and h.slot.get() is not old_model  # reloaded from the previous folder
    assert h.slot.get().probabilities(frame).shape == SERVICE_HW
    rolled = h.events[-1]
    assert rolled["stage"] == "rolled_back" and "5 inference errors in a row" in rolled["reason"]
    assert rolled["to"].startswith("tiny-1.0.0-") and rolled["from"].startswith("tiny-2.3.0-")
    store = h.manager.store
    assert store.active().name.startswith("tiny-1.0.0-") and store.read_pending() is None
    assert audit_events(h)[-1] == ("model-rollback", "rolled_back")
    # and after a restart the device starts with the model it rolled back to
    again = Harness(h.settings.state_dir, h.settings.model.public_key_file)
    assert again.version == "1.0.0"


def test_frame_rate_collapse_rolls_back_after_the_settle_time(harness: Harness, archives) -> None:
    h = harness
    h.manager.observe({"fps_out": 10.0, "frames_processed": 50, "frames_paused": 0})
    h.update(archives["2.0.0"].as_uri(), sha256_of(archives["2.0.0"]))
    slow = {"fps_out": 3.0, "frames_paused": 0, "inference_ms_p50": 310.0, "measure_ms_p50": 4.0}
    h.clock.now += 5  # too early to judge: the fps meter still holds frames of the old model
    assert h.manager.observe({**slow, "frames_processed": 60}).action == "watching"
    h.clock.now += 20
    decision = h.manager.observe({**slow, "frames_processed": 120})
    assert decision.action == "rollback" and "3.00 fps" in decision.reason and "10.00 fps" in decision.reason
    assert "at most 3.23 fps" in decision.reason
    assert h.version == "1.0.0" and h.events[-1]["stage"] == "rolled_back"


def test_watch_rules() -> None:
    rules = WatchRules(window_s=60, max_consecutive_errors=3, min_fps_fraction=0.5, settle_s=20)
    w = ServiceWatch(rules, started=0.0, fps_before=8.0, baseline={"inference_errors": 4, "frames_processed": 10,
                                                                   "frames_paused": 0})
    assert w.on_inference_error(2, 1.0).action == "watching"
    assert w.on_inference_error(3, 1.0).action == "rollback"
    assert w.observe({"inference_errors": 7, "frames_processed": 10}, 2.0).action == "rollback"  # none processed
    assert w.observe({"inference_errors": 7, "frames_processed": 11}, 2.0).action == "watching"
    assert w.observe({"consecutive_inference_errors": 3}, 2.0).action == "rollback"
    # a paused pipeline is no frame-rate collapse
    assert w.observe({"fps_out": 0.0, "frames_paused": 40}, 30.0).action == "watching"
    assert w.observe({"fps_out": 3.9, "frames_paused": 0}, 30.0).action == "rollback"
    assert w.observe({"fps_out": 4.1, "frames_paused": 0}, 30.0).action == "watching"
    # nor is a source that delivers fewer frames while the pipeline could do more (vehicle stopped)
    starved = {"fps_out": 0.5, "frames_paused": 0, "inference_ms_p50": 20.0, "measure_ms_p50": 5.0}
    assert w.observe(starved, 30.0).action == "watching"
    assert w.observe({**starved, "measure_ms_p50": 300.0}, 30.0).action == "rollback"  # measuring its output
    assert w.observe({"fps_out": 4.1, "frames_paused": 0}, 60.0).action == "commit"
    # without a rate from before the update, only errors can roll back
    blind = ServiceWatch(rules, started=0.0, fps_before=None)
    assert blind.observe({"fps_out": 0.1}, 59.0).action == "watching"


def test_restart_during_the_watch_resumes_it_then_rolls_back(harness: Harness, archives) -> None:
    h = harness
    h.update(archives["2.0.0"].as_uri(), sha256_of(archives["2.0.0"]))
    # the agent dies (crash, watchdog) while watching: it restarts with the new model and watches again
    first = Harness(h.settings.state_dir, h.settings.model.public_key_file)
    assert first.version == "2.0.0" and first.manager.stage == "watching"
    first.manager.observe({"fps_out": 1.0})
    assert first.events[0]["stage"] == "watching" and first.events[0]["resumed_after_restart"] == 1
    # ... and dies again: max_restarts_while_watching (2) reached, back to 1.0.0 before loading
    second = Harness(h.settings.state_dir, h.settings.model.public_key_file)
    assert second.version == "1.0.0" and second.manager.stage == "idle"
    second.manager.observe({"fps_out": 1.0})
    assert second.events[0]["stage"] == "rolled_back" and "restarted 2 times" in second.events[0]["reason"]
    assert second.manager.store.read_pending() is None


def test_corrupted_active_model_falls_back_to_previous_at_start(harness: Harness, archives) -> None:
    h = harness
    h.update(archives["2.0.0"].as_uri(), sha256_of(archives["2.0.0"]))
    h.clock.now += 61
    h.manager.observe({"fps_out": 10.0})
    flip_byte(h.manager.store.active() / "model-fp32.onnx")
    again = Harness(h.settings.state_dir, h.settings.model.public_key_file)
    assert again.version == "1.0.0" and again.manager.store.active().name.startswith("tiny-1.0.0-")
    again.manager.observe({})
    assert [e.get("note") for e in again.events] == ["active model unusable", "fell back to the previous model"]


def test_one_update_at_a_time_and_manual_rollback(harness: Harness, archives) -> None:
    h = harness
    h.update(archives["2.0.0"].as_uri(), sha256_of(archives["2.0.0"]))
    with pytest.raises(CommandError, match="still being watched"):
        UpdateCommands(h.manager).update(Command("model-update", {"url": archives["1.0.0"].as_uri(),
                                                                 "sha256": sha256_of(archives["1.0.0"])}, "t"))
    # the key_id an unsigned command claims is not its origin: the topic is (only a verified signature names a key)
    result = UpdateCommands(h.manager).rollback(Command("model-rollback", {"key_id": "office"}, "t"))
    assert result["stage"] == "rolled_back" and result["origin"] == "t" and h.version == "1.0.0"
    assert list(AuditLog(h.settings.state_dir / "audit.jsonl").entries())[-1]["origin"] == "t"
    status = h.manager.status(include_installed=True)
    assert status["stage"] == "idle" and status["active"].startswith("tiny-1.0.0-")
    assert {m["version"] for m in status["installed"]} == {"1.0.0", "2.0.0"}
    # a command whose signature the registry verified carries that key as its origin, in reports and audit
    last = h.update(archives["2.0.0"].as_uri(), sha256_of(archives["2.0.0"]), verified_key_id="office")
    assert last["stage"] == "watching" and last["origin"] == "key:office"
    activated = [r for r in AuditLog(h.settings.state_dir / "audit.jsonl").entries() if r["event"] == "model-activate"]
    assert activated[-1]["origin"] == "key:office"


def test_same_bundle_again_is_a_no_op(harness: Harness, archives) -> None:
    h = harness
    running = h.slot.get()
    last = h.update(archives["1.0.0"].as_uri(), sha256_of(archives["1.0.0"]))
    assert last["stage"] == "active" and "already the active model" in last["note"] and h.slot.get() is running


def test_pinned_device_refuses_other_versions(tmp_path, keys, archives) -> None:
    h = Harness(tmp_path / "state", keys[1])
    h.settings = Settings(h.settings.updates, h.settings.model.model_copy(update={"expected_version": "1.0.0"}),
                          h.settings.state_dir)
    h.manager = UpdateManager(h.settings, load_model=h.load, swap_model=h.swap, report=h.events.append)
    last = h.update(archives["2.0.0"].as_uri(), sha256_of(archives["2.0.0"]))
    assert last["stage"] == "failed" and "pinned" in last["reason"]


# -- chunked transfer over MQTT ---------------------------------------------------------------------
def _chunks(archive: Path, size: int) -> list[str]:
    data = archive.read_bytes()
    return [base64.b64encode(data[i:i + size]).decode() for i in range(0, len(data), size)]


def test_chunked_transfer_over_a_real_broker_survives_a_restart(harness: Harness, archives, mosquitto,
                                                                subscriber, tmp_path) -> None:
    from edge_agent.comms.mqtt import MqttCommunicator
    from edge_agent.config.mqtt import MqttConfig
    from edge_agent.updates.chunks import iter_chunk_commands

    h = harness
    archive, sha = archives["2.0.0"], sha256_of(archives["2.0.0"])
    bodies = list(iter_chunk_commands(archive, 16 * 1024, transfer_id="t-2.0.0", version="2.0.0"))
    parts = [b["data"] for b in bodies]
    assert len(parts) >= 4 and all(b["sha256"] == sha and b["count"] == len(parts) for b in bodies)
    office = subscriber(mosquitto.url, "crackseg/van-1/cmd/response")

    def agent(manager: UpdateManager) -> MqttCommunicator:
        registry = CommandRegistry(audit=manager.audit)
        manager.register_commands(registry)
        comm = MqttCommunicator(MqttConfig(url=mosquitto.url, reconnect_min_s=1, reconnect_max_s=1), "van-1",
                                outbox_path=tmp_path / "outbox.db")
        comm.subscribe_commands(registry)
        comm.start()
        deadline = time.monotonic() + 15
        while not comm.is_connected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the command subscription follows the connection
        return comm

    def send(indices: list[int], expect: int) -> list[dict]:
        for i in indices:
            body = {**bodies[i], "request_id": f"c{i}"}
            office.client.publish("crackseg/van-1/cmd/model-chunk", json.dumps(body), qos=1).wait_for_publish(5)
        msgs = office.wait_for(expect, timeout=30)
        return [json.loads(m.payload) for m in msgs]

    comm = agent(h.manager)
    first = send([0, 1, 1], 3)  # a duplicate is harmless
    assert [r["ok"] for r in first] == [True, True, True]
    assert first[-1]["result"]["received"] == 2 and not first[-1]["result"]["complete"]
    # a chunk that does not belong to the transfer is refused with a reason
    bad = {"transfer_id": "t-2.0.0", "index": 0, "count": len(parts) + 1, "sha256": sha, "data": parts[0]}
    office.client.publish("crackseg/van-1/cmd/model-chunk", json.dumps(bad), qos=1).wait_for_publish(5)
    answer = json.loads(office.wait_for(4, timeout=30)[-1].payload)
    assert not answer["ok"] and "use a new transfer_id" in answer["error"]
    comm.stop(flush_timeout=1)
    # the agent restarts: the chunks it had are on disk
    h2 = Harness(h.settings.state_dir, h.settings.model.public_key_file)
    comm = agent(h2.manager)
    try:
        rest = send(list(range(2, len(parts))), 4 + len(parts) - 2)[4:]
        assert all(r["ok"] for r in rest), rest
        final = rest[-1]["result"]
        assert final["complete"] and final["update"]["accepted"]
        assert h2.manager.wait(60)
        assert h2.events[-1]["stage"] == "watching" and h2.version == "2.0.0"
    finally:
        comm.stop(flush_timeout=1)
    commands = [r for r in AuditLog(h.settings.state_dir / "audit.jsonl").entries() if r["event"] == "command"]
    assert len([r for r in commands if r["command"] == "model-chunk"]) == len(parts) + 2  # + duplicate + bad one
    assert [r["outcome"] for r in commands].count("refused") == 1


def test_chunks_with_the_wrong_hash_are_discarded_as_a_whole(harness: Harness, archives) -> None:
    m = harness.manager
    parts = _chunks(archives["2.0.0"], 64 * 1024)
    for i, p in enumerate(parts):
        args = {"transfer_id": "bad", "index": i, "count": len(parts), "sha256": "1" * 64, "data": p}
        if i < len(parts) - 1:
            UpdateCommands(m).chunk(Command("model-chunk", args, "t"))
        else:
            with pytest.raises(CommandError, match="the transfer was discarded"):
                UpdateCommands(m).chunk(Command("model-chunk", args, "t"))
    assert m.chunks.status("bad") is None and harness.version == "1.0.0"
    with pytest.raises(CommandError, match="not base64"):
        UpdateCommands(m).chunk(Command("model-chunk", {"transfer_id": "x", "index": 0, "count": 1,
                                                       "sha256": "1" * 64, "data": "@@@"}, "t"))
    with pytest.raises(CommandError, match="chunk_max_bytes"):
        UpdateCommands(m).chunk(Command("model-chunk", {"transfer_id": "x", "index": 0, "count": 1,
                                                       "sha256": "1" * 64,
                                                       "data": base64.b64encode(b"x" * 300_000).decode()}, "t"))
