"""Config values from the environment and from the command line.

Why variables at all: on a fleet the YAML file is the same on every vehicle and a systemd
drop-in sets what differs (``CRACKSEG_DEVICE_ID=van-07``); the original service's variables
(MODEL_PATH, INFERENCE_DEVICE, ...) keep working so its deployments migrate unchanged.

Precedence (later wins): YAML file < legacy variables < ``CRACKSEG_<SECTION>__<KEY>``
variables < overrides (the CLI's flags).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge_agent.config.errors import ConfigError, ConfigIssue
from edge_agent.config.yaml_lines import KeyPath, format_key_path, parse_yaml

ENV_PREFIX = "CRACKSEG_"
# CRACKSEG_* variables that are not config keys.
ENV_NOT_KEYS = frozenset({"CRACKSEG_CONFIG"})
# INFERENCE_DEVICE -> (backend, onnxruntime providers in order of preference).
INFERENCE_DEVICES: dict[str, tuple[str, list[str]]] = {
    "cpu": ("onnx", ["cpu"]),
    "cuda": ("onnx", ["cuda", "cpu"]),
    "tensorrt": ("onnx", ["tensorrt", "cuda", "cpu"]),
    "tflite": ("tflite", ["cpu"]),
}
# Legacy variables of the original service, mapped onto config keys.
LEGACY_ENV: dict[str, tuple[str, ...]] = {
    "MODEL_PATH": ("model", "path"),
    "MODEL_VERSION": ("model", "expected_version"),
    "LOG_LEVEL": ("logging", "level"),
    "BATCH_SIZE": ("model", "batch_size"),
    "MAX_WORKERS": ("model", "threads"),
    "MEMORY_LIMIT": ("health", "memory_limit"),
}

Override = tuple[KeyPath, Any, str]  # (key path, value, where it came from)


def env_value(raw: str, source: str = "env") -> Any:
    """Variables are text; pydantic converts "2" / "true" itself. ``[a, b]`` is a YAML list.

    Lists and mappings go through the same bounded YAML reader as the file, so a variable
    cannot smuggle in what the file may not hold (an alias bomb); ConfigError on bad YAML.
    """
    text = raw.strip()
    if text == "" or text.lower() in ("null", "none", "~"):
        return None
    if text[0] in "[{":
        return parse_yaml(text, source)[0]
    return text


def environment_overrides(environ: Mapping[str, str]) -> tuple[list[Override], list[ConfigIssue]]:
    """(key path, value, source) from the legacy variables and ``CRACKSEG_<SECTION>__<KEY>``."""
    out: list[Override] = []
    issues: list[ConfigIssue] = []
    for name, path in LEGACY_ENV.items():
        if name in environ:
            try:
                value = env_value(environ[name], f"env {name}")
            except ConfigError as exc:
                issues.extend(_as_variable_issues(exc, name, path))
                continue
            if name == "LOG_LEVEL" and isinstance(value, str):
                value = value.upper()
            out.append((path, value, f"env {name}"))
    if "INFERENCE_DEVICE" in environ:
        device = environ["INFERENCE_DEVICE"].strip().lower()
        if device not in INFERENCE_DEVICES:
            issues.append(ConfigIssue("env INFERENCE_DEVICE", None, "model.backend",
                                      f"'{environ['INFERENCE_DEVICE']}' is not one of "
                                      f"{', '.join(INFERENCE_DEVICES)}"))
        else:
            backend, providers = INFERENCE_DEVICES[device]
            out.append((("model", "backend"), backend, "env INFERENCE_DEVICE"))
            out.append((("model", "providers"), list(providers), "env INFERENCE_DEVICE"))
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_KEYS:
            continue
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
        if not all(parts):
            issues.append(ConfigIssue(f"env {name}", None, "", "malformed name: write CRACKSEG_SECTION__KEY, e.g. "
                                                               "CRACKSEG_MQTT__HOST or CRACKSEG_DEVICE_ID"))
            continue
        try:
            value = env_value(environ[name], f"env {name}")
        except ConfigError as exc:
            issues.extend(_as_variable_issues(exc, name, parts))
            continue
        out.append((parts, value, f"env {name}"))
    return out, issues


def _as_variable_issues(exc: ConfigError, name: str, path: KeyPath) -> list[ConfigIssue]:
    """A YAML problem inside a variable's value, named by the variable (a variable has no lines)."""
    return [ConfigIssue(f"env {name}", None, format_key_path(path), f"not a valid YAML list/mapping: {i.message}")
            for i in exc.issues]


def flatten_overrides(overrides: Mapping[str, Any], prefix: KeyPath = ()) -> list[Override]:
    """``{"camera.source": x}`` or ``{"camera": {"source": x}}``; None means "flag not given"."""
    out: list[Override] = []
    for key, value in overrides.items():
        path = prefix + tuple(str(key).split("."))
        if isinstance(value, Mapping):
            out.extend(flatten_overrides(value, path))
        elif value is not None:
            out.append((path, value, "override"))
    return out


def set_path(data: dict[Any, Any], path: KeyPath, value: Any) -> None:
    """Put ``value`` at ``path``, replacing whatever non-mapping stood on the way."""
    cur = data
    for seg in path[:-1]:
        if not isinstance(cur.get(seg), dict):
            cur[seg] = {}
        cur = cur[seg]
    cur[path[-1]] = value
