"""Latency of artifacts through the device runtime, measured so that a busy machine cannot bias it.

Why two figures: a shared 2-core workstation is rarely idle, and wall-clock medians then say
as much about the neighbours as about the model. Each artifact gets
- ``wall_ms``: the median wall time of ``Segmenter.probabilities`` on one frame with
  ``threads`` inference threads (what the agent pays per frame), and
- ``cpu_ms``: the median CPU time of the same call on a one-thread session, measured with the
  calling thread's clock (onnxruntime and LiteRT run a one-thread session in the caller), which
  load does not inflate much; comparisons between graphs rest on it.
Artifacts are timed round-robin (one call each in turn), so load changes hit all of them alike.
The machine's 1-minute load average before and after is part of the result.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def timing_frame(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth random BGR frame (blocks of 8 px), the same for every artifact."""
    rng = np.random.default_rng(seed)
    h, w = size
    blocks = rng.integers(40, 200, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:h, :w])


@dataclass
class _Timed:
    info: dict
    seg: Any
    single: Any
    frame: np.ndarray
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def measure(paths: list[Path], threads: int = 2, runs: int = 30, warmup: int = 3,
            frame_size: tuple[int, int] | None = None) -> dict:
    """Wall and CPU medians per artifact (see the module docstring)."""
    from edge_agent.detectors.runtime import open_model

    rows = []
    for path in paths:
        seg, single = open_model(path, threads=threads), open_model(path, threads=1)
        size = tuple(frame_size or seg.contract.input_size or (320, 480))
        frame = timing_frame((int(size[0]), int(size[1])))
        for s in (seg, single):
            for _ in range(warmup):
                s.probabilities(frame)
        info = {"file": Path(path).name, "backend": seg.backend_name, "precision": seg.info.precision,
                "input_dtype": seg.contract.input_dtype, "input_size": list(seg.contract.input_size or []),
                "frame": list(size), "plan": seg.plan_for(*frame.shape[:2]).describe()}
        rows.append(_Timed(info, seg, single, frame))
    load_before = os.getloadavg()[0]
    for _ in range(runs):
        for r in rows:
            t0 = time.perf_counter()
            r.seg.probabilities(r.frame)
            r.wall.append((time.perf_counter() - t0) * 1000.0)
            c0 = time.thread_time()
            r.single.probabilities(r.frame)
            r.cpu.append((time.thread_time() - c0) * 1000.0)
    out = [{**r.info, "wall_ms": round(statistics.median(r.wall), 2), "wall_min_ms": round(min(r.wall), 2),
            "cpu_ms": round(statistics.median(r.cpu), 2)} for r in rows]
    return {"threads": threads, "runs": runs, "cpus": os.cpu_count(),
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "results": out}


def render(result: dict) -> str:
    lines = [f"median of {result['runs']} runs, round-robin; wall with {result['threads']} threads, CPU time of a "
             f"1-thread session; {result['cpus']} CPUs, load average {result['load_avg_1min'][0]:.1f} -> "
             f"{result['load_avg_1min'][1]:.1f}", "",
             "| artifact | input | frame | plan | wall ms | CPU ms (1 thread) |", "|---|---|---|---|---:|---:|"]
    for r in result["results"]:
        lines.append(f"| {r['file']} | {r['input_dtype']} | {r['frame'][0]}x{r['frame'][1]} | {r['plan']} | "
                     f"{r['wall_ms']:.1f} | {r['cpu_ms']:.1f} |")
    return "\n".join(lines) + "\n"
