"""``crackseg-edge check-config FILE``: is this config valid, and can it run on this machine?

Why more than validation: a config can be valid and still fail at the first frame of a
survey, e.g. ``backend: tflite`` on a machine without a TFLite interpreter, or a model path
of the wrong kind. ``check-config`` is what an operator runs after editing, so it tries what
the agent will need (the backend's runtime, the model's file or bundle) and names the fix.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import Any

from edge_agent.config.errors import ConfigError, ConfigIssue, printable
from edge_agent.config.loader import LoadedConfig, load_config_located
from edge_agent.util.cpus import threads_per_worker
from edge_agent.util.urls import redact_url

ONNX_INSTALL = ("onnxruntime is not installed here: pip install onnxruntime (onnxruntime-gpu for CUDA, the Jetson "
                "wheel on a Jetson), or use backend tflite")


def _summary(cfg: Any) -> str:
    model = cfg.model
    model_text = str(model.path) if model.path else "shipped reference bundle"
    threads = threads_per_worker(model.threads, model.workers)
    runtime = (f"{model.backend}, {model.workers} worker(s) x {threads} thread(s)" if model.workers > 1
               else f"{model.backend}, {threads} thread(s)")
    if model.backend == "onnx":
        runtime += f", providers {'/'.join(model.providers)}"
    mqtt = cfg.mqtt
    mqtt_text = getattr(mqtt, "url", None) or ":".join(
        str(v) for v in (getattr(mqtt, "host", None), getattr(mqtt, "port", None)) if v is not None) or "configured"
    http = f"http://{cfg.http.host}:{cfg.http.port}" if cfg.http.enabled else "http off"
    source = str(cfg.camera.source)
    camera = redact_url(source) if "://" in source else source  # rtsp://user:password@...; paths as written
    return (f"device {cfg.device_id}; model {model_text} ({runtime}); camera {camera}; mqtt {mqtt_text}; "
            f"{http}; state {cfg.state_dir}")


def backend_problem(backend: str) -> str | None:
    """Why ``backend`` cannot run here (with what to install), or None when its runtime imports.

    Imports the runtime for real, as the agent will (``load_interpreter_class`` for TFLite:
    ai-edge-litert, else tflite_runtime): a package that is present but broken (a numpy ABI
    mismatch) fails here as it would at start-up. Nothing heavier is loaded.
    """
    if backend == "auto":  # either runtime will do; the faster one present is picked at start
        if backend_problem("onnx") is None or backend_problem("tflite") is None:
            return None
        return f"no inference runtime is installed: {ONNX_INSTALL}"
    if backend == "onnx":
        try:
            importlib.import_module("onnxruntime")
        except ImportError:
            return ONNX_INSTALL
        return None
    from edge_agent.detectors.backends.tflite import load_interpreter_class
    from edge_agent.detectors.errors import BackendUnavailableError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tflite_runtime's slowness warning: it does run
            load_interpreter_class()
    except BackendUnavailableError as exc:
        return str(exc)
    except ImportError as exc:  # installed but not importable here
        return (f"the TFLite interpreter does not load here ({exc}): pip install 'crackseg-edge[tflite]' "
                "(ai-edge-litert), or use backend onnx")
    return None


def model_problem(model: Any) -> tuple[str, str] | None:
    """(key, why) when the configured model cannot be opened by its backend, else None.

    Bundles are not opened here: the config package may not import ``edge_agent.bundle``
    (docs/architecture.md), and the agent verifies them at start anyway.
    """
    from edge_agent.detectors.runtime import BUNDLE_ARCHIVE_SUFFIXES, REFERENCE_BUNDLE

    path = Path(model.path) if model.path is not None else REFERENCE_BUNDLE
    key = "model.path" if model.path is not None else "model.backend"
    if not path.exists():
        if model.path is None:
            return key, f"the shipped reference bundle is missing ({path}): reinstall crackseg-edge"
        return key, f"model file not found: {path}"
    if path.is_dir() or path.name.lower().endswith(BUNDLE_ARCHIVE_SUFFIXES):
        return None  # a bundle: its manifest and hashes are verified when the agent opens it
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".tflite"):
        return key, (f"{path}: unknown model format '{path.suffix}'; expected .onnx, .tflite or a bundle "
                     "(directory with manifest.json, or .tar.gz/.zip archive)")
    if model.backend != "auto" and suffix != f".{model.backend}":
        return key, (f"{path} is a {suffix} file but model.backend is {model.backend}: set backend "
                     f"{suffix.lstrip('.')} or deploy the .{model.backend} model")
    return None


def runtime_issues(loaded: LoadedConfig) -> list[ConfigIssue]:
    """What stops this valid config from running on this machine, located like validation errors."""
    issues = []
    model = loaded.config.model
    problem = backend_problem(model.backend)
    if problem is not None:
        issues.append(ConfigIssue(*loaded.where(("model", "backend")), "model.backend", problem))
    located = model_problem(model)
    if located is not None:
        key, why = located
        issues.append(ConfigIssue(*loaded.where(tuple(key.split("."))), key, why))
    return issues


def check_config_main(path: str | Path) -> int:
    """``crackseg-edge check-config FILE``: every problem on stderr (exit 2), or ``OK: <summary>`` (exit 0)."""
    try:
        loaded = load_config_located(path)
        issues = runtime_issues(loaded)
        if issues:
            raise ConfigError(issues)
    except ConfigError as exc:
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        print(f"{len(exc.issues)} problem(s) in {path}", file=sys.stderr)
        return 2
    cfg = loaded.config
    if cfg.http.enabled and cfg.http.host not in ("127.0.0.1", "::1", "localhost"):
        print(printable(f"warning: {path}: http.host {cfg.http.host} exposes /metrics and /model/info beyond this "
                        "machine"), file=sys.stderr)
    print(printable(f"OK: {path}: {_summary(cfg)}"))
    return 0
