"""``backend: auto``: run each artifact size on whichever runtime is faster on this very machine.

Why measure instead of a rule: the same INT8 network at 720x1280 ran 146 ms on onnxruntime and
52 ms on LiteRT on this x86 host, while at 320x480 the two were within 20 %; on ARM the order
can flip again (XNNPACK is tuned for NEON). So the first time a frame size needs an artifact,
both runtimes open it and run a few inferences on a neutral frame; the faster one stays, the
other is closed. The decision is remembered in a small JSON file keyed by the artifacts'
hashes, the CPU and the runtime versions, so later starts pay nothing.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edge_agent.detectors.backends.base import InferenceBackend
from edge_agent.detectors.errors import BackendUnavailableError
from edge_agent.detectors.preprocess import InputAdapter

log = logging.getLogger(__name__)

TIMED_RUNS = 3
CACHE_NAME = "backend-choice.json"
Opener = Callable[[], InferenceBackend]


class Candidate(NamedTuple):
    """One runtime's artifact file for a size: its path, its sha256 (from the bundle's manifest,
    which the loader already checked the file against) and how to open it."""

    path: Path
    sha256: str
    opener: Opener


def default_cache_dir() -> Path:
    """``$CACHE_DIRECTORY`` (systemd CacheDirectory=), ``$XDG_CACHE_HOME`` or ``~/.cache``, /crackseg-edge."""
    for var in ("CRACKSEG_CACHE_DIR", "CACHE_DIRECTORY"):
        if os.environ.get(var):
            return Path(os.environ[var].split(":")[0])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crackseg-edge"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}|{cpu}|{os.cpu_count()}"


def _versions() -> str:
    from importlib import metadata

    out = []
    for dist in ("onnxruntime", "ai-edge-litert", "tflite-runtime"):
        try:
            out.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ",".join(out)


def choice_key(file_sha256: dict[str, str], threads: int | None) -> str:
    """Cache key from each candidate's file sha256 (hex), this machine and the runtime versions."""
    digest = hashlib.sha256()
    for name in sorted(file_sha256):
        digest.update(f"{name}:{file_sha256[name]}\n".encode())
    digest.update(f"{_machine()}|{_versions()}|threads={threads}".encode())
    return digest.hexdigest()[:32]


def time_backend(backend: InferenceBackend, runs: int = TIMED_RUNS) -> float:
    """Median milliseconds of ``runs`` inferences on a mid-grey frame (after one warm-up)."""
    contract = backend.contract
    h, w = contract.input_size or (contract.stride * 20, contract.stride * 30)
    adapter = InputAdapter(contract)
    batch = adapter.prepare(np.full((h, w, 3), 128, dtype=np.uint8))
    backend.run(batch)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.run(batch)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


class BackendChoice:
    """Opens the faster of several candidate runtimes for one artifact size, remembering the verdict."""

    def __init__(self, candidates: dict[str, Candidate], threads: int | None,
                 cache_dir: Path | None = None):
        self.candidates = candidates
        self.threads = threads
        self.cache_path = (cache_dir or default_cache_dir()) / CACHE_NAME
        self.chosen: str | None = None
        self.timings: dict[str, float] = {}

    def _read_cache(self, key: str) -> str | None:
        try:
            data = json.loads(self.cache_path.read_text())
            entry = data.get(key)
            return entry["backend"] if isinstance(entry, dict) and entry.get("backend") in self.candidates else None
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _write_cache(self, key: str) -> None:
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = json.loads(self.cache_path.read_text())
                if not isinstance(data, dict):
                    data = {}
            except (OSError, ValueError):
                data = {}
            data[key] = {"backend": self.chosen, "ms": self.timings, "when": time.time()}
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.cache_path)
        except OSError as exc:  # a read-only home must not stop inference
            log.debug("backend choice not cached (%s)", exc)

    def open(self) -> tuple[str, Path, InferenceBackend]:
        """(backend name, artifact file, open backend) of the faster runtime here."""
        if len(self.candidates) == 1:
            name, (path, _, opener) = next(iter(self.candidates.items()))
            self.chosen = name
            return name, path, opener()
        key = choice_key({n: c.sha256 for n, c in self.candidates.items()}, self.threads)
        cached = self._read_cache(key)
        if cached is not None:
            path, _, opener = self.candidates[cached]
            try:
                self.chosen = cached
                return cached, path, opener()
            except BackendUnavailableError:
                pass  # the runtime was uninstalled since: measure again
        # One runtime open at a time: a 720p session holds 200-400 MB, and two at once would set
        # the process's memory high-water mark for the rest of its life.
        for name, (_, _, opener) in self.candidates.items():
            try:
                self.timings[name] = round(time_backend(opener()), 2)
            except BackendUnavailableError as exc:
                log.info("backend auto: %s not available here (%s)", name, exc)
            release_freed_memory()
        if not self.timings:
            raise BackendUnavailableError("backend auto: no inference runtime could open the model; install "
                                          "onnxruntime or ai-edge-litert")
        self.chosen = min(self.timings, key=lambda n: self.timings[n])
        log.info("backend auto: %s (median ms here: %s)", self.chosen, self.timings)
        self._write_cache(key)
        path, _, opener = self.candidates[self.chosen]
        return self.chosen, path, opener()


def release_freed_memory() -> None:
    """Collect, then hand freed heap pages back to the OS (glibc ``malloc_trim``) so a closed
    runtime session does not stay in the agent's resident memory."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass
