"""How many CPUs this process may use, and how to split them between inference workers.

``os.cpu_count()`` counts the machine; a systemd ``CPUAffinity=``, ``taskset`` or a container's
cpuset gives the process fewer, and threads beyond those only queue. Runtimes left to choose
for themselves differ: onnxruntime takes the physical cores, LiteRT takes **one** thread, so a
config's ``threads: null`` ("all cores") is resolved here, once, for every runtime.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(threads: int | None, workers: int = 1) -> int:
    """``threads`` when set; otherwise the usable CPUs shared evenly by ``workers`` (at least 1 each)."""
    if threads:
        return threads
    return max(1, usable_cpus() // max(1, workers))
