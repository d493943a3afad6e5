"""Load the agent config: read the file, merge variables and flags, validate.

Every pydantic error location (``('model', 'threads')``) is mapped back to the line of the
file, or to the variable or flag that set the value, so ``check-config`` prints
``FILE:LINE: key.path: message``. The YAML reading is in ``yaml_lines``, the variables in
``environment``, secrets in ``secrets``, the ``check-config`` command in ``check``.

Precedence (later wins): YAML file < legacy variables (MODEL_PATH, LOG_LEVEL, ...) <
``CRACKSEG_<SECTION>__<KEY>`` variables < ``overrides`` (the CLI's flags).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from edge_agent.config.environment import environment_overrides, flatten_overrides, set_path
from edge_agent.config.errors import ConfigError, ConfigIssue
from edge_agent.config.secrets import reject_clear_text_secrets
from edge_agent.config.yaml_lines import KeyPath, format_key_path, parse_config_yaml

if TYPE_CHECKING:
    from edge_agent.config.agent import AgentConfig

DEFAULTS_SOURCE = "(built-in defaults)"


# -- relative paths ---------------------------------------------------------------------------
def _type_args(tp: Any) -> list[Any]:
    """Flatten Optional/Union/Annotated into the concrete types a field may hold."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _type_args(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [t for a in typing.get_args(tp) for t in _type_args(a)]
    return [tp]


def _absolutize(value: Any, tp: Any, base: Path) -> Any:
    """Make relative paths of Path-typed fields relative to the config file's folder.

    Why: the service runs with the working directory ``/``; a path written next to the
    config (``model: {path: models/x.onnx}``) must not depend on where the agent started.
    """
    for arg in _type_args(tp):
        if isinstance(arg, type) and issubclass(arg, BaseModel) and isinstance(value, dict):
            for name, field in arg.model_fields.items():
                key = field.alias or name
                if key in value:
                    value[key] = _absolutize(value[key], field.annotation, base)
            return value
        if isinstance(arg, type) and issubclass(arg, PurePath) and isinstance(value, str) and value:
            p = Path(os.path.expanduser(value))
            return str(p if p.is_absolute() else base / p)
        if typing.get_origin(arg) in (list, tuple) and isinstance(value, list):
            inner = typing.get_args(arg)
            if inner:
                return [_absolutize(v, inner[0], base) for v in value]
    return value


# -- validation errors -> lines ---------------------------------------------------------------
def _clean_loc(loc: tuple, data: Any) -> KeyPath:
    """Drop pydantic's union/validator tags (``'str'``, ``'function-after[...]'``) from a location."""
    out: list[Any] = []
    cur = data
    for i, seg in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(cur, dict):
            if seg in cur:
                out.append(seg)
                cur = cur[seg]
            elif last:
                out.append(seg)
        elif isinstance(cur, list) and isinstance(seg, int) and 0 <= seg < len(cur):
            out.append(seg)
            cur = cur[seg]
        # else: a tag below a scalar; skip it
    return tuple(out)


def _model_at(root: type[BaseModel], path: KeyPath, data: Any) -> type[BaseModel] | None:
    """The pydantic model that validates ``path`` (for "did you mean"), following union tags in ``data``."""
    cls: type[BaseModel] | None = root
    cur = data
    for seg in path:
        if cls is None or not isinstance(seg, str) or seg not in cls.model_fields:
            return None
        cur = cur.get(seg) if isinstance(cur, dict) else None
        models = [a for a in _type_args(cls.model_fields[seg].annotation)
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) > 1 and isinstance(cur, dict):
            models = [m for m in models if _literals_match(m, cur)]
        cls = models[0] if len(models) == 1 else None
    return cls


def _literals_match(model: type[BaseModel], value: dict) -> bool:
    """True when every Literal field of ``model`` present in ``value`` holds one of its literals."""
    for name, field in model.model_fields.items():
        if typing.get_origin(field.annotation) is typing.Literal and name in value:
            if value[name] not in typing.get_args(field.annotation):
                return False
    return True


def _message(err: Mapping[str, Any], key: KeyPath, root: type[BaseModel], data: Any) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        parent = _model_at(root, key[:-1], data)
        name = str(key[-1]) if key else "?"
        msg = f"unknown key '{name}'"
        if parent is not None:
            allowed = sorted(parent.model_fields)
            close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
            msg += f"; did you mean '{close[0]}'?" if close else f"; allowed keys: {', '.join(allowed)}"
        return msg
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    value = err.get("input")
    if not kind.startswith("value_error") and not isinstance(value, (dict, list)):
        msg += f" (got {value!r})"
        if kind == "string_type" and isinstance(value, (int, float, bool)):
            msg += f"; write it in quotes: '{value}'"
    return msg


def _locate(key: KeyPath, lines: dict[KeyPath, int], origins: dict[KeyPath, str],
            source: str) -> tuple[str, int | None]:
    """Where a problem at ``key`` came from: the variable/override that set it, else the file line."""
    for n in range(len(key), -1, -1):
        prefix = key[:n]
        if prefix in origins:
            return origins[prefix], None
        if prefix in lines:
            return source, lines[prefix]
    return source, (1 if source != DEFAULTS_SOURCE else None)


# -- public API -----------------------------------------------------------------------------
def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Load, merge and validate the agent config; raise ConfigError listing every problem.

    ``path`` None means built-in defaults (plus variables and overrides). ``overrides`` are
    the CLI's flags: nested dicts or dotted keys (``{"camera.source": "0"}``); None values
    are ignored so unset flags can be passed as they are. ``environ`` defaults to os.environ.
    """
    from edge_agent.config.agent import AgentConfig

    env = os.environ if environ is None else environ
    issues: list[ConfigIssue] = []
    data: dict[Any, Any]
    lines: dict[KeyPath, int]
    if path is None:
        source, data, lines, base = DEFAULTS_SOURCE, {}, {}, Path.cwd()
    else:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([ConfigIssue(source, None, "", "config file not found (copy one of device_configs/ "
                                                             "there, or give the right path)")]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([ConfigIssue(source, None, "", f"cannot read the config file: {exc}")]) from None
        data, lines, issues = parse_config_yaml(text, source)
        base = p.resolve().parent
    issues += reject_clear_text_secrets(data, (), lines, source)  # removed from data: reported once
    data = _absolutize(data, AgentConfig, base)

    origins: dict[KeyPath, str] = {}
    env_items, env_issues = environment_overrides(env)
    issues.extend(env_issues)
    for key, value, origin in env_items + flatten_overrides(overrides or {}):
        set_path(data, key, value)
        origins[key] = origin
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            key = _clean_loc(tuple(err["loc"]), data)
            where, line = _locate(key, lines, origins, source)
            message = _message(err, key, AgentConfig, data)
            issue = ConfigIssue(where, line, format_key_path(key) or "(top level)", message)
            if issue not in issues:
                issues.append(issue)
    if issues:
        issues.sort(key=lambda i: (i.source != source, i.line or 0))
        raise ConfigError(issues)
    return config


# Names that lived here before the split; import them from ``edge_agent.config`` instead.
_MOVED = {
    "ConfigError": "errors", "ConfigIssue": "errors", "SecretError": "errors",
    "check_config_main": "check",
    "read_secret": "secrets", "credential_path": "secrets", "model_public_key": "secrets",
    "SECRET_KEYS": "secrets",
    "parse_yaml_with_lines": "yaml_lines", "format_key_path": "yaml_lines",
    "environment_overrides": "environment", "ENV_PREFIX": "environment", "LEGACY_ENV": "environment",
    "INFERENCE_DEVICES": "environment",
}


def __getattr__(name: str) -> Any:
    """Keep ``from edge_agent.config.loader import X`` working for the names that moved out."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"edge_agent.config.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
