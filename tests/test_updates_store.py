"""Installed models on disk: versioned folders, atomic active/previous links, start-up fallback,
clean-up, the audit log and ``crackseg-edge model list|activate|rollback``.

The models, keys and bundles come from tests/bundles.py (shared with the other update tests).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from edge_agent.bundle import pack_archive
from edge_agent.updates.audit import AuditLog
from edge_agent.updates.store import ModelStore, StoreError
from tests.bundles import (
    ARTIFACT,
    build_archive,
    build_bundle,
    flip_byte,
    tiny_onnx,
)


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def archives(tmp_path_factory, keys) -> dict[str, Path]:
    key, _ = keys
    folder = tmp_path_factory.mktemp("archives")
    return {"1.0.0": build_archive(folder, "1.0.0", key=key),
            "1.1.0": build_archive(folder, "1.1.0", key=key, onnx=tiny_onnx(1)),
            "2.0.0": build_archive(folder, "2.0.0", key=key, onnx=tiny_onnx(2)),
            "unsigned": build_archive(folder, "3.0.0", onnx=tiny_onnx(3))}


@pytest.fixture
def store(tmp_path, keys) -> ModelStore:
    return ModelStore(tmp_path / "state" / "models", keys[1], require_signature=True)


def leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if p.name.startswith(".") and p.name != ".lock")


# -- install ----------------------------------------------------------------------------------
def test_install_writes_a_verified_versioned_folder_once(store, archives) -> None:
    folder, bundle = store.install(archives["1.0.0"])
    assert folder.parent == store.root and re.fullmatch(r"tiny-1\.0\.0-[0-9a-f]{8}", folder.name)
    assert bundle.signed and bundle.version == "1.0.0"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "manifest.sha256", "manifest.sig",
                                                        ARTIFACT, "selftest"]
    assert leftovers(store) == []
    again, _ = store.install(archives["1.0.0"])  # idempotent: the same folder, verified again
    assert again == folder and len(store.model_dirs()) == 1
    # a damaged copy of the same bundle is replaced by the fresh one
    flip_byte(folder / ARTIFACT)
    fixed, _ = store.install(archives["1.0.0"])
    assert fixed == folder and store.verify(folder).version == "1.0.0" and leftovers(store) == []


def test_install_refuses_damaged_or_unsigned_archives_and_leaves_nothing(store, archives, tmp_path) -> None:
    bad = tmp_path / "bad.tar.gz"
    data = archives["1.0.0"].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="truncated or corrupt archive"):
        store.install(bad)
    with pytest.raises(StoreError, match="not signed"):
        store.install(archives["unsigned"])
    assert store.model_dirs() == [] and leftovers(store) == []


# -- switching --------------------------------------------------------------------------------
def test_activate_and_rollback_switch_relative_links(store, archives) -> None:
    v1, _ = store.install(archives["1.0.0"])
    v2, _ = store.install(archives["2.0.0"])
    assert store.activate(v1) is None
    assert store.active() == v1 and store.previous() is None
    assert store.activate(v2) == v1
    assert store.active() == v2 and store.previous() == v1
    assert os.readlink(store.active_link) == v2.name  # relative: the state folder can move
    assert store.rollback() == v1
    assert store.active() == v1 and store.previous() == v2
    assert store.rollback() == v2 and store.active() == v2
    store.activate(v2)  # already active: nothing changes
    assert store.previous() == v1
    with pytest.raises(StoreError, match="not an installed model folder"):
        store.activate(archives["1.0.0"].parent)
    assert leftovers(store) == []


def test_rollback_without_previous_returns_to_the_configured_model(store, archives) -> None:
    v1, _ = store.install(archives["1.0.0"])
    store.activate(v1)
    assert store.rollback() is None
    assert store.active() is None
    with pytest.raises(StoreError, match="nothing to roll back"):
        store.rollback()


def test_activate_refuses_a_folder_that_no_longer_verifies(store, archives) -> None:
    v1, _ = store.install(archives["1.0.0"])
    v2, _ = store.install(archives["2.0.0"])
    store.activate(v1)
    flip_byte(v2 / ARTIFACT)
    with pytest.raises(StoreError, match="sha256 does not match"):
        store.activate(v2)
    assert store.active() == v1


def test_a_link_pointing_outside_the_store_is_refused(store, tmp_path) -> None:
    store.root.mkdir(parents=True)
    os.symlink("../../elsewhere", store.active_link)
    with pytest.raises(StoreError, match="outside"):
        store.active()


# -- housekeeping -----------------------------------------------------------------------------
def test_cleanup_removes_what_an_interrupted_update_left(store, archives) -> None:
    v1, _ = store.install(archives["1.0.0"])
    store.activate(v1)
    (store.root / ".tmp-install-x1y2" / "bundle").mkdir(parents=True)
    os.symlink(v1.name, store.root / ".active.tmp-abcd")
    (store.root / ".pending.json.tmp-1234").write_text("{")
    removed = store.cleanup_temp()
    assert sorted(removed) == [".active.tmp-abcd", ".pending.json.tmp-1234", ".tmp-install-x1y2"]
    assert leftovers(store) == [] and store.active() == v1


def test_gc_keeps_active_previous_and_the_newest_others(store, archives) -> None:
    folders = [store.install(archives[v])[0] for v in ("1.0.0", "1.1.0", "2.0.0")]
    for i, f in enumerate(folders):
        os.utime(f, (1000 + i, 1000 + i))
    store.activate(folders[0])
    store.activate(folders[2])  # active 2.0.0, previous 1.0.0
    assert store.gc(keep_versions=2) == []  # previous + the newest other
    assert store.gc(keep_versions=1) == [folders[1].name]
    assert {d.name for d in store.model_dirs()} == {folders[0].name, folders[2].name}


def test_list_shows_roles_and_validity(store, archives) -> None:
    v1, _ = store.install(archives["1.0.0"])
    v2, _ = store.install(archives["2.0.0"])
    store.activate(v1)
    store.activate(v2)
    flip_byte(v1 / "selftest" / "input.png")
    listed = {m.version: m for m in store.list()}
    assert listed["2.0.0"].active and listed["2.0.0"].valid and listed["2.0.0"].signed
    assert listed["1.0.0"].previous and not listed["1.0.0"].valid and "sha256" in listed["1.0.0"].error
    assert store.find("2.0.0") == v2 and store.find(v1.name) == v1
    with pytest.raises(StoreError, match="no installed model has version 9.9.9"):
        store.find("9.9.9")


# -- audit log --------------------------------------------------------------------------------
def test_audit_log_appends_json_lines_and_rotates(tmp_path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", max_bytes=600)
    for i in range(6):
        audit.write("model-update", "failed", "office", update_id=f"u{i}", reason="x" * 40)
    with open(tmp_path / "audit.jsonl", "a") as f:
        f.write('{"torn": ')  # a power cut in the middle of a line
    records = list(audit.entries())
    assert [r["update_id"] for r in records] == [f"u{i}" for i in range(6)][-len(records):]
    assert (tmp_path / "audit.jsonl.1").exists() and len(records) >= 3
    assert records[-1]["origin"] == "office" and records[-1]["outcome"] == "failed"
    assert records[-1]["time"].endswith("Z")
    audit.write_command({"event": "command", "command": "pause", "request_id": "r1", "origin": "topic:t",
                         "ok": False, "error": "bad signature"})
    last = list(audit.entries())[-1]
    assert last["outcome"] == "refused" and last["command"] == "pause" and last["error"] == "bad signature"


# -- the CLI ----------------------------------------------------------------------------------
def test_cli_list_activate_rollback(store, archives, keys, tmp_path, capsys) -> None:
    from edge_agent.cli import main

    state = store.root.parent
    assert main(["model", "list", "--state-dir", str(state)]) == 0
    assert "no models installed" in capsys.readouterr().out
    v1, _ = store.install(archives["1.0.0"])
    v2, _ = store.install(archives["2.0.0"])
    assert main(["model", "activate", "1.0.0", "--state-dir", str(state)]) == 0
    assert store.active() == v1 and "selftest" in capsys.readouterr().out
    assert main(["model", "activate", v2.name, "--state-dir", str(state)]) == 0
    assert store.active() == v2 and store.previous() == v1
    capsys.readouterr()
    assert main(["model", "list", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    line_v2 = next(line for line in out.splitlines() if v2.name in line)
    line_v1 = next(line for line in out.splitlines() if v1.name in line)
    assert line_v2.startswith("*") and "active, valid" in line_v2
    assert line_v1.startswith("-") and "previous, valid" in line_v1
    assert main(["model", "rollback", "--state-dir", str(state)]) == 0
    assert store.active() == v1
    # user errors: one line, exit 2, nothing changed
    capsys.readouterr()
    assert main(["model", "activate", "7.7.7", "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crackseg-edge: error: no installed model has version 7.7.7") and err.count("\n") == 1
    assert main(["model", "activate", "--state-dir", str(state)]) == 2
    assert store.active() == v1
    events = [(r["event"], r["outcome"]) for r in AuditLog(state / "audit.jsonl").entries()]
    assert events == [("model-activate", "active"), ("model-activate", "active"), ("model-rollback", "rolled_back")]
    assert all(r["origin"].startswith("cli:") for r in AuditLog(state / "audit.jsonl").entries())


def test_cli_activate_runs_the_selftest_first(store, keys, tmp_path, capsys) -> None:
    from edge_agent.cli import main

    key, _ = keys
    good, _ = store.install(pack_archive(build_bundle(tmp_path / "g", "1.0.0", key=key), tmp_path / "g.tar.gz"))
    bad, _ = store.install(pack_archive(build_bundle(tmp_path / "b", "1.5.0", key=key, wrong_expected=True),
                                        tmp_path / "b.tar.gz"))
    store.activate(good)
    assert main(["model", "activate", "1.5.0", "--state-dir", str(store.root.parent)]) == 2
    assert "selftest failed" in capsys.readouterr().err
    assert store.active() == good
    data = json.loads((bad / "manifest.json").read_text())
    assert data["version"] == "1.5.0"
