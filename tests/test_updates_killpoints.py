"""kill -9 at every step of an update, a rollback and a chunked transfer: a fresh process always
finds a valid model that loads and runs.

Each step runs in a subprocess with ``CRACKSEG_TEST_KILL_AT=<stage>``; the hook in
store/manager/download code SIGKILLs the process exactly there (return code -9 proves the
stage was reached). Then one fresh process calls ``resolve_startup_model()`` on every
resulting state folder, loads what it returns and segments a frame with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config.sections import ModelConfig
from edge_agent.config.updates import UpdatesConfig
from edge_agent.updates.durable import KILL_ENV
from edge_agent.updates.manager import Settings, UpdateManager, model_loader
from tests.bundles import build_archive, make_keys, sha256_of, tiny_onnx

REPO = Path(__file__).resolve().parents[1]

# Runs one action against a state folder: update URL SHA | rollback | chunks ARCHIVE SHA.
ACTION = r"""
import base64, json, sys
from pathlib import Path
from edge_agent.config.sections import ModelConfig
from edge_agent.config.updates import UpdatesConfig
from edge_agent.comms.base import Command
from edge_agent.updates.commands import UpdateCommands
from edge_agent.updates.manager import Settings, UpdateManager, model_loader

state, key, configured, action = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
model = ModelConfig(path=configured, public_key_file=key, require_signature=True, threads=1)
settings = Settings(UpdatesConfig(enabled=True, chunk_max_bytes=16384, allowed_url_schemes=["file"],
                                  file_root=state.parent.parent), model, state)
load = model_loader(model)
m = UpdateManager(settings, load_model=load, swap_model=lambda seg: None, report=lambda e: None)
m.resolve_startup_model()
if action == "update":
    print(json.dumps(m.update(sys.argv[5], sys.argv[6])))
elif action == "rollback":
    print(json.dumps(m.rollback("kill test", automatic=True)))
elif action == "chunks":
    data = Path(sys.argv[5]).read_bytes()
    parts = [data[i:i + 16384] for i in range(0, len(data), 16384)]
    for i, part in enumerate(parts):
        args = {"transfer_id": "kill", "index": i, "count": len(parts), "sha256": sys.argv[6],
                "data": base64.b64encode(part).decode()}
        result = UpdateCommands(m).chunk(Command("model-chunk", args, "crackseg/van-1/cmd/model-chunk"))
        if result["complete"]:
            break
    m.wait(60)
    print(json.dumps(result))
"""

# For each state folder: what a restarting agent loads, and proof that it runs.
RESOLVE = r"""
import json, sys
from pathlib import Path
import numpy as np
from edge_agent.config.sections import ModelConfig
from edge_agent.config.updates import UpdatesConfig
from edge_agent.updates.manager import Settings, UpdateManager, model_loader

key, configured = Path(sys.argv[1]), Path(sys.argv[2])
model = ModelConfig(path=configured, public_key_file=key, require_signature=True, threads=1)
load = model_loader(model)
out = {}
for state in map(Path, sys.argv[3:]):
    m = UpdateManager(Settings(UpdatesConfig(enabled=True), model, state), load_model=load,
                      swap_model=lambda seg: None)
    path = m.resolve_startup_model()
    seg = load(path or configured)
    prob = seg.probabilities(np.full((80, 112, 3), 120, np.uint8))
    root = state / "models"
    out[state.name] = {"path": str(path) if path else None, "version": seg.info.version,
                       "shape": list(prob.shape),
                       "leftovers": sorted(p.name for p in root.iterdir() if ".tmp-" in p.name) if root.is_dir()
                       else [],
                       "partial": sorted(p.name for p in (state / "downloads").glob("*.part"))}
print(json.dumps(out))
"""


def run_py(code: str, *args: object, kill_at: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Archives 1.0.0 and 2.0.0, and two state folders to copy: 1.0.0 confirmed; 2.0.0 being watched."""
    root = tmp_path_factory.mktemp("kill")
    key, pub = make_keys(root / "keys")
    v1 = build_archive(root, "1.0.0", key=key)
    v2 = build_archive(root, "2.0.0", key=key, onnx=tiny_onnx(2))
    configured = tiny_onnx(5)
    model = ModelConfig(path=configured, public_key_file=pub, require_signature=True, threads=1)
    load = model_loader(model)

    def manager(state: Path, **kw) -> UpdateManager:
        return UpdateManager(Settings(UpdatesConfig(enabled=True, watch_window_s=60, fps_settle_s=10,
                                                    allowed_url_schemes=["file"], file_root=root, **kw), model,
                                      state), load_model=load, swap_model=lambda seg: None)

    idle = root / "base-idle"
    m = manager(idle)
    assert m.update(v1.as_uri(), sha256_of(v1))["stage"] == "watching"
    m.observe({})  # baseline
    m.watch.started -= 61  # the window has passed
    assert m.observe({}).action == "commit"
    watching = root / "base-watching"
    shutil.copytree(idle, watching, symlinks=True)
    assert manager(watching).update(v2.as_uri(), sha256_of(v2))["stage"] == "watching"
    return {"root": root, "pub": pub, "configured": configured, "v1": v1, "v2": v2, "idle": idle,
            "watching": watching}


def fresh_state(world: dict, base: str, name: str) -> Path:
    dest = world["root"] / "states" / name
    shutil.copytree(world[base], dest, symlinks=True)
    return dest


# stage -> version a restart must run (after "activated" the new one is in place)
UPDATE_STAGES = {"downloaded": "1.0.0", "unpacked": "1.0.0", "staged": "1.0.0", "installed": "1.0.0",
                 "pending_written": "1.0.0", "previous_tmp_link": "1.0.0", "previous_linked": "1.0.0",
                 "active_tmp_link": "1.0.0", "activated": "2.0.0", "swapped": "2.0.0"}
# killed while rolling back 2.0.0 (watched) to 1.0.0: either is valid, the links must never be broken
ROLLBACK_STAGES = ["rollback_loaded", "active_tmp_link", "rollback_active"]
CHUNK_STAGES = ["chunk_written", "assembled"]


def test_kill_minus_nine_anywhere_leaves_a_valid_model(world: dict) -> None:
    states: dict[str, tuple[Path, set[str]]] = {}
    common = (world["pub"], world["configured"])
    for stage, version in UPDATE_STAGES.items():
        state = fresh_state(world, "idle", f"update-{stage}")
        proc = run_py(ACTION, state, *common, "update", world["v2"].as_uri(), sha256_of(world["v2"]), kill_at=stage)
        assert proc.returncode == -signal.SIGKILL, f"{stage}: not killed there\n{proc.stdout}\n{proc.stderr}"
        states[state.name] = (state, {version})
    for stage in ROLLBACK_STAGES:
        state = fresh_state(world, "watching", f"rollback-{stage}")
        proc = run_py(ACTION, state, *common, "rollback", kill_at=stage)
        assert proc.returncode == -signal.SIGKILL, f"{stage}: not killed there\n{proc.stdout}\n{proc.stderr}"
        states[state.name] = (state, {"1.0.0", "2.0.0"})
    for stage in CHUNK_STAGES:
        state = fresh_state(world, "idle", f"chunks-{stage}")
        proc = run_py(ACTION, state, *common, "chunks", world["v2"], sha256_of(world["v2"]), kill_at=stage)
        assert proc.returncode == -signal.SIGKILL, f"{stage}: not killed there\n{proc.stdout}\n{proc.stderr}"
        states[state.name] = (state, {"1.0.0"})

    proc = run_py(RESOLVE, *common, *(s for s, _ in states.values()))
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (state, versions) in states.items():
        got = found[name]
        assert got["version"] in versions, (name, got)
        assert got["path"] and Path(got["path"]).parent == state / "models", (name, got)
        assert got["shape"] == [80, 112] and got["leftovers"] == [] and got["partial"] == [], (name, got)


def test_a_killed_chunked_transfer_resumes_after_the_restart(world: dict) -> None:
    """The chunks stored before the kill count; resending completes the transfer and the update."""
    for stage in CHUNK_STAGES:
        state = fresh_state(world, "idle", f"resume-{stage}")
        args = (state, world["pub"], world["configured"], "chunks", world["v2"], sha256_of(world["v2"]))
        assert run_py(ACTION, *args, kill_at=stage).returncode == -signal.SIGKILL
        transfers = state / "downloads" / "transfers"
        kept = list(transfers.glob("kill/chunk-*")) if transfers.is_dir() else []
        assert kept or list((state / "downloads").glob("*.tar.gz")), f"{stage}: nothing survived the kill"
        proc = run_py(ACTION, *args)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["complete"] and result["update"]["accepted"], (stage, result)
        assert (state / "models" / "active").resolve().name.startswith("tiny-2.0.0-")

