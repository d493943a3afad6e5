"""Benchmark suite: the agent's way (ONNX/TFLite, INT8, pruned) against the upstream way (torch fp32 eager).

One command, ``python -m bench.run [--quick]``, measures on this machine and writes
``docs/benchmarks/results.json`` (+ ``results.md`` and PNG plots). See docs/benchmarks.md.

Modules, one job each: ``machine`` (what CPU this is and its peak), ``models`` (per-backend
latency and accuracy of each model variant), ``agent`` (the whole agent end to end from a
video file), ``mqtt`` (a local mosquitto and the outbox throughput), ``plots`` and ``run``.
"""

from __future__ import annotations

from edge_agent.errors import UserError


class BenchError(UserError):
    """A benchmark cannot run as asked; the message says what to fix (printed as one line)."""
