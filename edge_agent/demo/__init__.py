"""``crackseg-edge demo`` (``run.py``) and the private Mosquitto it needs (``broker.py``).

``run_demo`` is imported lazily, so that the broker launcher (used by the benchmarks and the tests)
does not pull in the whole agent.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_demo"]


def __getattr__(name: str) -> Any:
    if name == "run_demo":
        from edge_agent.demo.run import run_demo

        return run_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
