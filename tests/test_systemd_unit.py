"""The shipped unit: systemd accepts it, it keeps the promised settings, and its exposure stays <= 2.5."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "crackseg-edge.service"
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


def unit_settings() -> dict[str, list[str]]:
    """Every KEY=VALUE of the unit, repeated keys kept in order."""
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists here (verify checks it)."""
    text = UNIT.read_text()
    exe = shutil.which("true") or "/bin/true"
    text, n = re.subn(r"^ExecStart=\S+", f"ExecStart={exe}", text, flags=re.M)
    assert n == 1
    out = tmp_path / UNIT.name
    out.write_text(text)
    return out


def test_unit_parses_and_keeps_the_contract():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    s = unit_settings()
    expect = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure", "DynamicUser": "yes",
        "StateDirectory": "crackseg-edge", "ConfigurationDirectory": "crackseg-edge", "ProtectSystem": "strict",
        "ProtectHome": "yes", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "DevicePolicy": "closed",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet": "",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes", "LockPersonality": "yes", "WantedBy": "multi-user.target",
    }
    for key, value in expect.items():
        assert s.get(key) == [value], key
    assert s["ExecStart"] == ["/opt/crackseg-edge/venv/bin/crackseg-edge run --config /etc/crackseg-edge/config.yaml"]
    assert "video" in s["SupplementaryGroups"][0].split()
    assert "char-video4linux rw" in s["DeviceAllow"]
    assert "@system-service" in s["SystemCallFilter"]
    assert int(re.match(r"\d+", s["WatchdogSec"][0]).group()) > 0
    assert s["StartLimitIntervalSec"] and s["StartLimitBurst"]
    creds = {v.split(":", 1)[0] for v in s["LoadCredential"]}
    assert {"mqtt-password", "model-signing-key"} <= creds
    for value in s["LoadCredential"]:
        assert value.split(":", 1)[1].startswith("/etc/crackseg-edge/credentials/")


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path):
    unit = verifiable_copy(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if UNIT.name in ln or "crackseg" in ln]
    assert r.returncode == 0, r.stdout + r.stderr
    assert not problems, "\n".join(problems)  # e.g. "Unknown key name", "Invalid syntax, ignoring"


@needs_analyze
def test_security_exposure_is_at_most_2_5(tmp_path: Path):
    unit = verifiable_copy(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path):
    """The check above can fail: a misspelt directive is reported."""
    unit = verifiable_copy(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomme=yes"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "ProtectHomme" in r.stdout + r.stderr


# The unit's SystemCallFilter= and MemoryDenyWriteExecute= re-created in a child process with
# libseccomp and PR_SET_MDWE, then the agent's heavy parts run inside it: if a dependency
# starts needing a blocked system call or W+X memory, this fails here instead of on a vehicle.
SANDBOX_CHILD = r"""
import ctypes, errno, json, mmap, os, sys
allowed, onnx_path = json.loads(sys.argv[1]), sys.argv[2]
lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x00050000 | errno.EPERM)  # SCMP_ACT_ERRNO(EPERM), like SystemCallErrorNumber=EPERM
for name in allowed:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:
        assert lib.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0) == 0, name  # SCMP_ACT_ALLOW
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS (NoNewPrivileges=yes)
mdwe = libc.prctl(65, 1, 0, 0, 0) == 0  # PR_SET_MDWE: MemoryDenyWriteExecute=yes (Linux >= 6.3)
assert lib.seccomp_load(ctx) == 0
try:
    os.sched_setaffinity(0, {0})
    raise SystemExit("filter not active: sched_setaffinity (@resources) was allowed")
except PermissionError:
    pass
if mdwe:
    try:
        mmap.mmap(-1, 4096, prot=7)
        raise SystemExit("MDWE not active")
    except PermissionError:
        pass
import sqlite3, tempfile, urllib.request
import numpy as np
from edge_agent.config.sections import HttpConfig
from edge_agent.detectors import open_model
from edge_agent.service import HealthServer
from edge_agent.stats import system
seg = open_model(onnx_path, threads=2)
mask = seg.segment(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
assert mask.shape == (120, 160)
system.process_rss_mb(); system.process_cpu_percent(); system.temperature_c()
with tempfile.TemporaryDirectory() as d:
    db = sqlite3.connect(os.path.join(d, "outbox.sqlite3"))
    db.execute("create table t(x)"); db.execute("insert into t values (1)"); db.commit(); db.close()
with HealthServer(HttpConfig(port=0), lambda: {"heartbeat_age_s": 0.1}) as server:
    assert urllib.request.urlopen(server.url + "/health", timeout=5).status == 200
import paho.mqtt.client  # noqa: F401
print("SANDBOX-OK mdwe=%s" % mdwe)
"""


def _syscall_group(group: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, timeout=60)
    names: set[str] = set()
    for line in out.stdout.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                names |= _syscall_group(word, seen)
        else:
            names.add(word)
    return names


@needs_analyze
@pytest.mark.skipif(__import__("ctypes.util").util.find_library("seccomp") is None, reason="libseccomp not installed")
def test_inference_stack_runs_under_the_units_sandbox(tmp_path: Path):
    import json
    import sys

    from tests.tiny_models import export_onnx, tiny_torch_model

    allowed: set[str] = set()
    for value in unit_settings()["SystemCallFilter"]:
        deny = value.startswith("~")
        for group in value.lstrip("~").split():
            names = _syscall_group(group) if group.startswith("@") else {group}
            allowed = allowed - names if deny else allowed | names
    assert "execve" in allowed and "sched_setaffinity" not in allowed and "mount" not in allowed
    model = export_onnx(tiny_torch_model(), tmp_path / "tiny.onnx", None)
    r = subprocess.run([sys.executable, "-c", SANDBOX_CHILD, json.dumps(sorted(allowed)), str(model)],
                       capture_output=True, text=True, timeout=120, cwd=str(UNIT.parents[1]))
    assert r.returncode == 0 and "SANDBOX-OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
