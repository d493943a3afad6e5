"""Readings of the host: CPU, memory, temperature, Raspberry Pi throttling.

Each reading returns None where the platform does not offer it (x86 boxes have no
throttling flags, containers may hide thermal zones) instead of failing.
"""

from __future__ import annotations

import glob
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import psutil

_PROCESS = psutil.Process(os.getpid())
PI_THROTTLED_SYSFS = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
THROTTLE_BITS = {
    0: "under_voltage", 1: "arm_frequency_capped", 2: "throttled", 3: "soft_temperature_limit",
    16: "under_voltage_occurred", 17: "arm_frequency_capping_occurred", 18: "throttling_occurred",
    19: "soft_temperature_limit_occurred",
}


def process_rss_mb() -> float:
    return _PROCESS.memory_info().rss / (1024 * 1024)


def process_cpu_percent() -> float:
    """CPU use of this process since the previous call (100 = one full core)."""
    return _PROCESS.cpu_percent(interval=None)


def system_cpu_percent() -> float:
    return psutil.cpu_percent(interval=None)


@lru_cache(maxsize=1)
def _thermal_zones() -> list[str]:
    return sorted(glob.glob("/sys/class/thermal/thermal_zone*/temp"))


def temperature_c() -> float | None:
    """Hottest thermal zone in degrees C (SoC temperature on Pi and Jetson), or None."""
    best = None
    for zone in _thermal_zones():
        try:
            value = int(Path(zone).read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if -40.0 < value < 150.0:
            best = value if best is None else max(best, value)
    if best is None:
        try:
            temps = psutil.sensors_temperatures()
        except (AttributeError, OSError):
            temps = {}
        values = [t.current for entries in temps.values() for t in entries if t.current]
        best = max(values) if values else None
    return best


def pi_throttling() -> dict | None:
    """Raspberry Pi firmware throttling flags (sysfs, else ``vcgencmd``), or None elsewhere."""
    raw = None
    try:
        raw = int(PI_THROTTLED_SYSFS.read_text().strip(), 16)
    except (OSError, ValueError):
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=2)
            if out.returncode == 0 and "=" in out.stdout:
                raw = int(out.stdout.strip().split("=", 1)[1], 16)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None
    if raw is None:
        return None
    return {"raw": hex(raw), **{name: bool(raw & (1 << bit)) for bit, name in THROTTLE_BITS.items()}}
