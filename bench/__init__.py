"""Benchmark suite: the agent's way (ONNX/TFLite, INT8, pruned) against the upstream way (torch fp32 eager).

One command, ``python -m bench.run [--quick]``, measures on this machine and writes
``docs/benchmarks/results.json`` (+ ``results.md`` and PNG plots). See docs/benchmarks.md.

Modules, one job each: ``run`` (the command line and its table of steps), ``steps`` (the
steps), ``sources`` (the shipped checkpoint and bundle), ``models`` (variants and their
latency), ``clip`` (the crack-dense road clip), ``agent`` (the whole agent end to end),
``mqtt`` (the outbox throughput), ``machine`` (the CPU and its peak, other devices),
``goals`` (headline figures and pass/fail), ``report`` (tables) and ``plots``.
"""

from __future__ import annotations

import sys

from edge_agent.errors import UserError


class BenchError(UserError):
    """A benchmark cannot run as asked; the message says what to fix (printed as one line)."""


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the tables and, last, the JSON line)."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)
