"""A model brought by hand (``crackseg-edge model install BUNDLE``, issue #15) and ``model-status`` on
an agent whose updates are off.

Install is the USB-stick path: the bundle is verified (signed by the configured key whenever
one is configured), self-tested with this device's settings, installed, activated and
audited as ``cli:<user>``; a tampered, foreign, unsigned or misbehaving bundle ends with one
line on stderr, exit 2, and nothing changed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent.commands import CommandRegistry
from edge_agent.cli import main
from edge_agent.comms.base import Command, CommandError
from edge_agent.updates.audit import AuditLog
from edge_agent.updates.commands import register_disabled_commands
from edge_agent.updates.store import ModelStore
from tests.bundles import build_archive, build_bundle, flip_byte, make_keys, tiny_onnx


@pytest.fixture(scope="module")
def office(tmp_path_factory) -> dict:
    """The office key, its public.pem, and bundles on a "USB stick"."""
    stick = tmp_path_factory.mktemp("usb")
    key, pub = make_keys(stick / "keys")
    foreign_key = Ed25519PrivateKey.generate()
    tampered = build_archive(stick / "t", "1.9.0", key=key, onnx=tiny_onnx(3))
    flip_byte(tampered)
    return {"pub": pub, "stick": stick,
            "good": build_archive(stick, "1.0.0", key=key),
            "newer": build_archive(stick, "2.0.0", key=key, onnx=tiny_onnx(2)),
            "folder": build_bundle(stick / "folder-bundle", "2.5.0", key=key, onnx=tiny_onnx(4)),
            "tampered": tampered,
            "foreign": build_archive(stick / "f", "3.0.0", key=foreign_key, onnx=tiny_onnx(2)),
            "unsigned": build_archive(stick / "u", "3.1.0", onnx=tiny_onnx(2)),
            "misbehaving": build_archive(stick / "m", "3.2.0", key=key, wrong_expected=True)}


def install(state: Path, bundle: Path, *extra: str) -> int:
    return main(["model", "install", str(bundle), "--state-dir", str(state), *extra])


def test_install_verifies_selftests_activates_and_audits(office, tmp_path, capsys) -> None:
    state = tmp_path / "state"
    store = ModelStore(state / "models")
    assert install(state, office["good"], "--public-key", str(office["pub"])) == 0
    out = capsys.readouterr().out
    assert "installed and active: tiny-1.0.0-" in out and "signed" in out and "restart the agent" in out
    assert store.active().name.startswith("tiny-1.0.0-")
    assert install(state, office["folder"], "--public-key", str(office["pub"])) == 0  # a folder works too
    assert store.active().name.startswith("tiny-2.5.0-") and store.previous().name.startswith("tiny-1.0.0-")
    capsys.readouterr()
    assert install(state, office["folder"], "--public-key", str(office["pub"])) == 0
    assert "already installed and active" in capsys.readouterr().out
    records = [r for r in AuditLog(state / "audit.jsonl").entries() if r["event"] == "model-install"]
    assert [r["version"] for r in records] == ["1.0.0", "2.5.0", "2.5.0"]
    assert all(r["origin"].startswith("cli:") and r["signed"] and r["selftest"]["passed"] for r in records)
    assert records[0]["source"] == str(office["good"])


@pytest.mark.parametrize("case, message", [
    ("tampered", "tiny-1.9.0.tar.gz: "),  # the archive is named, not a temporary folder
    ("foreign", "signature does not match"),
    ("unsigned", "not signed"),
    ("misbehaving", "selftest failed"),
    ("missing", "no such bundle archive or folder"),
])
def test_bad_bundles_are_one_line_errors_and_change_nothing(office, tmp_path, capsys, case, message) -> None:
    state = tmp_path / "state"
    store = ModelStore(state / "models")
    assert install(state, office["good"], "--public-key", str(office["pub"])) == 0
    before = (store.active(), sorted(p.name for p in store.model_dirs()))
    capsys.readouterr()
    bundle = office["stick"] / "nothing.tar.gz" if case == "missing" else office[case]
    assert install(state, bundle, "--public-key", str(office["pub"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("crackseg-edge: error: ") and err.count("\n") == 1 and message in err, err
    assert (store.active(), sorted(p.name for p in store.model_dirs())) == before
    assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp-")]


def test_install_uses_the_device_config(office, tmp_path, capsys) -> None:
    """With --config: the configured key (a signature is required since one is configured) and state folder."""
    state = tmp_path / "state"
    frames = tmp_path / "frames"
    frames.mkdir()
    cfg = tmp_path / "device.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"path": str(tiny_onnx(5)), "threads": 1,
                                             "public_key_file": str(office["pub"])},
                                   "camera": {"source": str(frames)}, "state_dir": str(state)}))
    assert main(["model", "install", str(office["newer"]), "--config", str(cfg)]) == 0
    assert ModelStore(state / "models").active().name.startswith("tiny-2.0.0-")
    capsys.readouterr()
    assert main(["model", "install", str(office["unsigned"]), "--config", str(cfg)]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main(["model", "install", "--config", str(cfg)]) == 2
    assert "install needs a BUNDLE" in capsys.readouterr().err


def test_model_status_answers_when_updates_are_disabled() -> None:
    registry = CommandRegistry()
    register_disabled_commands(registry, lambda: {"name": "crackseg", "version": "1.3.0", "backend": "onnx"})
    status = registry(Command("model-status", {}, "crackseg/van-1/cmd/model-status"))
    assert status["stage"] == "disabled" and status["enabled"] is False
    assert status["running"] == {"name": "crackseg", "version": "1.3.0", "backend": "onnx"}
    for name in ("model-update", "model-chunk", "model-chunk-abort", "model-rollback"):
        with pytest.raises(CommandError, match="updates are off on this device"):
            registry(Command(name, {}, f"crackseg/van-1/cmd/{name}"))

    def broken() -> dict:
        raise RuntimeError("no model yet")

    bare = CommandRegistry()
    register_disabled_commands(bare, broken)
    assert "no model yet" in bare(Command("model-status", {}, "t"))["running"]["error"]
