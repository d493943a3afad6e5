"""The Pi/Jetson install route: a venv over the system's packages keeps the system's numpy.

The system OpenCV (with GStreamer) is built for the system numpy 1.x; pip resolving the agent's
dependencies in such a venv pulled numpy 2 and broke ``import cv2``. What this host can show:
a real venv over Debian's Python and numpy, and pip's own resolution (``--dry-run --report``,
from PyPI) of the device dependencies with and without the constraints install.sh writes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")
DEVICE_DEPS = ["numpy>=1.24", "opencv-python-headless>=4.8", "onnxruntime>=1.17"]


def system_numpy() -> str | None:
    if not SYSTEM_PYTHON.exists():
        return None
    r = subprocess.run([str(SYSTEM_PYTHON), "-c", "import numpy, venv, ensurepip; print(numpy.__version__)"],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.strip() if r.returncode == 0 else None


def resolve(python: Path, report: Path, *extra: str) -> dict[str, str]:
    """What pip would install (name -> version) in that venv, without installing anything."""
    r = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
                        "--report", str(report), *extra, *DEVICE_DEPS], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"pip could not resolve from the package index here: {r.stderr.strip()[-300:]}")
    data = json.loads(report.read_text())
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in data.get("install", [])}


@pytest.mark.slow
def test_constraints_keep_the_system_numpy(tmp_path: Path):
    version = system_numpy()
    if version is None or not version.startswith("1."):
        pytest.skip("needs Debian's python3 with python3-numpy 1.x and python3-venv (apt-get install python3-numpy)")
    venv = tmp_path / "venv"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    constraints = tmp_path / "system-constraints.txt"
    out = subprocess.run(["bash", str(REPO / "systemd" / "system-constraints.sh"), str(python), str(constraints)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert constraints.read_text().strip() == f"numpy=={version}" and version in out
    pinned = resolve(python, tmp_path / "pinned.json", "-c", str(constraints))
    assert pinned.get("numpy", version) == version  # the system numpy stays (nothing installed over it)
    unpinned = resolve(python, tmp_path / "unpinned.json")
    # without the pin pip installs a numpy 2 over it (opencv-python-headless 5 wants one): what broke cv2
    assert unpinned["numpy"].split(".")[0] != version.split(".")[0]
