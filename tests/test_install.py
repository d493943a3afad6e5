"""systemd/install.sh: shellcheck-clean, device detection, and the dry-run plan (nothing executed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "systemd" / "install.sh"
DEVICES = ["raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano", "x86-dev"]


def run_install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DEVICE_TREE_MODEL_FILE", "TEGRA_RELEASE_FILE")}
    full_env.update(env or {})
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=60, env=full_env)


def commands(plan: str) -> list[str]:
    return [ln[2:] for ln in plan.splitlines() if ln.startswith("+ ")]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_shellcheck_clean():
    r = subprocess.run(["shellcheck", "--severity=style", str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_bash_syntax_and_help():
    assert subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, timeout=30).returncode == 0
    r = run_install("--help")
    assert r.returncode == 0 and "--dry-run" in r.stdout and "--uninstall" in r.stdout


@pytest.mark.parametrize("device", DEVICES)
def test_dry_run_plan_changes_nothing(tmp_path: Path, device: str):
    root = tmp_path / "root"
    root.mkdir()
    r = run_install("--dry-run", "--device", device, "--prefix", "/opt/cse", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert list(root.iterdir()) == []  # a dry run executes nothing
    cmds = commands(r.stdout)
    venv = f"{root}/opt/cse/venv"
    system_site = device.startswith(("raspberry", "jetson"))
    assert any(c.startswith("python3 -m venv") and c.endswith(venv) and ("--system-site-packages" in c) == system_site
               for c in cmds), cmds
    extras = "[tflite]" if not device.startswith("jetson") else ""
    pin = f"-c {venv}/system-constraints.txt " if system_site else ""  # the system numpy stays (its OpenCV)
    assert f"{venv}/bin/python -m pip install --disable-pip-version-check --upgrade {pin}{REPO}{extras}" in cmds
    assert (f"bash {REPO}/systemd/system-constraints.sh {venv}/bin/python {venv}/system-constraints.txt" in cmds) \
        == system_site
    assert f"write {root}/etc/crackseg-edge/config.yaml (mode 0644)" in cmds
    assert f"write {root}/etc/systemd/system/crackseg-edge.service (mode 0644)" in cmds
    assert f"install -d -m 0700 {root}/etc/crackseg-edge/credentials" in cmds
    assert f"install -m 0600 /dev/null {root}/etc/crackseg-edge/credentials/mqtt-password" in cmds
    assert f"systemctl --root={root} enable crackseg-edge.service" in cmds
    dropin = f"write {root}/etc/systemd/system/crackseg-edge.service.d/jetson.conf (mode 0644)"
    assert (dropin in cmds) == device.startswith("jetson")
    if system_site:  # the pip OpenCV (no GStreamer) must not shadow the system one
        assert f"{venv}/bin/python -m pip uninstall -y opencv-python-headless opencv-python" in cmds
    assert not any("apt-get" in c for c in cmds)  # --root implies no apt
    assert f"device config device_configs/{device}.yaml" in r.stdout


def test_dry_run_on_this_machine_plans_the_live_install():
    r = run_install("--dry-run", "--device", "raspberry-pi-5")
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert "apt-get update" in cmds
    assert any(c.startswith("env DEBIAN_FRONTEND=noninteractive apt-get install") and "python3-opencv" in c
               and "gstreamer1.0-libcamera" in c for c in cmds)
    assert "python3 -m venv --system-site-packages /opt/crackseg-edge/venv" in cmds
    assert "/opt/crackseg-edge/venv/bin/crackseg-edge check-config /etc/crackseg-edge/config.yaml" in cmds
    tail = cmds[-3:]
    assert tail == ["systemctl daemon-reload", "systemctl enable crackseg-edge.service",
                    "systemctl restart crackseg-edge.service"]
    assert run_install("--dry-run", "--device", "x86-dev", "--no-start").stdout.count("systemctl restart") == 0


@pytest.mark.parametrize("model,tegra,expected", [
    ("Raspberry Pi 5 Model B Rev 1.0", None, "raspberry-pi-5"),
    ("Raspberry Pi 4 Model B Rev 1.4", None, "raspberry-pi-4"),
    ("Raspberry Pi Compute Module 4 Rev 1.0", None, "raspberry-pi-4"),
    ("NVIDIA Jetson Orin Nano Developer Kit", None, "jetson-orin-nano"),
    ("NVIDIA Jetson Nano Developer Kit", "# R32 (release), REVISION: 7.4", "jetson-nano"),
    ("", "# R32 (release), REVISION: 7.1, GCID: 1", "jetson-nano"),
    ("", "# R36 (release), REVISION: 4.0", "jetson-orin-nano"),
    ("", None, "x86-dev"),
])
def test_device_detection(tmp_path: Path, model: str, tegra: str | None, expected: str):
    model_file = tmp_path / "model"
    if model:
        model_file.write_bytes(model.encode() + b"\0")  # device-tree strings end in NUL
    tegra_file = tmp_path / "nv_tegra_release"
    if tegra:
        tegra_file.write_text(tegra + "\n")
    r = run_install("--dry-run", "--root", str(tmp_path / "r"),
                    env={"DEVICE_TREE_MODEL_FILE": str(model_file), "TEGRA_RELEASE_FILE": str(tegra_file)})
    assert r.returncode == 0, r.stderr
    assert f"==> detected device: {expected}" in r.stdout


def test_existing_config_kept_unless_force(tmp_path: Path):
    root = tmp_path / "root"
    conf = root / "etc" / "crackseg-edge" / "config.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text("device_id: edited-by-operator\n")
    r = run_install("--dry-run", "--device", "x86-dev", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert "keeping the existing" in r.stdout
    cmds = commands(r.stdout)
    assert f"write {conf} (mode 0644)" not in cmds
    assert f"write {conf}.dist (mode 0644)" in cmds
    r = run_install("--dry-run", "--device", "x86-dev", "--root", str(root), "--force")
    cmds = commands(r.stdout)
    assert f"write {conf} (mode 0644)" in cmds
    assert any(re.fullmatch(rf"cp -p {re.escape(str(conf))} {re.escape(str(conf))}\.bak\.\d{{14}}", c) for c in cmds)
    assert conf.read_text() == "device_id: edited-by-operator\n"


def test_uninstall_plan_keeps_config_and_state_unless_purge(tmp_path: Path):
    r = run_install("--dry-run", "--uninstall", "--prefix", "/opt/cse")
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert cmds[0] == "systemctl disable --now crackseg-edge.service"
    assert "rm -f /etc/systemd/system/crackseg-edge.service" in cmds and "rm -rf /opt/cse" in cmds
    assert not any("/var/lib/crackseg-edge" in c or c == "rm -rf /etc/crackseg-edge" for c in cmds)
    assert "kept /etc/crackseg-edge" in r.stdout
    purge = commands(run_install("--dry-run", "--uninstall", "--purge").stdout)
    assert "rm -rf /etc/crackseg-edge" in purge and "rm -rf /var/lib/crackseg-edge" in purge
    assert "rm -rf /var/lib/private/crackseg-edge" in purge


def test_bad_input_is_a_one_line_error(tmp_path: Path):
    r = run_install("--dry-run", "--device", "banana-pi")
    assert r.returncode == 2 and "unknown device 'banana-pi'" in r.stderr and "x86-dev" in r.stderr
    r = run_install("--dry-run", "--prefix", "relative/dir")
    assert r.returncode == 2 and "--prefix must be an absolute path" in r.stderr
    old_python = tmp_path / "python3.8"
    old_python.write_text("#!/bin/sh\n[ \"$1\" = -V ] && echo 'Python 3.8.10' && exit 0\nexit 1\n")
    old_python.chmod(0o755)
    r = run_install("--dry-run", "--device", "jetson-nano", "--python", str(old_python))
    assert r.returncode == 2 and "Python 3.8.10 is too old" in r.stderr and "--python" in r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_jetson_dropin_is_valid_systemd(tmp_path: Path):
    r = run_install("--dry-run", "--device", "jetson-orin-nano", "--root", str(tmp_path / "r"))
    dropin = "\n".join(ln[6:] for ln in r.stdout.splitlines() if ln.startswith("    | "))
    assert "DeviceAllow=char-nvhost* rw" in dropin and "PrivateTmp=no" in dropin
    unit = (REPO / "systemd" / "crackseg-edge.service").read_text()
    unit = re.sub(r"^ExecStart=\S+", f"ExecStart={shutil.which('true') or '/bin/true'}", unit, flags=re.M)
    (tmp_path / "crackseg-edge.service").write_text(unit)
    (tmp_path / "crackseg-edge.service.d").mkdir()
    (tmp_path / "crackseg-edge.service.d" / "jetson.conf").write_text(dropin + "\n")
    v = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "crackseg-edge.service")], capture_output=True,
                       text=True, timeout=60)
    assert v.returncode == 0 and "jetson.conf" not in v.stdout + v.stderr, v.stdout + v.stderr
