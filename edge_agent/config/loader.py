"""Load the agent config: read the file (bounded), merge variables and flags, validate.

Every pydantic error location (``('model', 'threads')``) is mapped back to the line of the
file, or to the variable or flag that set the value, so ``check-config`` prints
``FILE:LINE: key.path: message``. The YAML reading is in ``yaml_lines``, the variables in
``environment``, secrets in ``secrets``, path and text fix-ups in ``values``, the
``check-config`` command in ``check``.

Precedence (later wins): YAML file < legacy variables (MODEL_PATH, LOG_LEVEL, ...) <
``CRACKSEG_<SECTION>__<KEY>`` variables < ``overrides`` (the CLI's flags).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from edge_agent.config.environment import environment_overrides, flatten_overrides, set_path
from edge_agent.config.errors import ConfigError, ConfigIssue
from edge_agent.config.secrets import reject_clear_text_secrets
from edge_agent.config.values import _clip, _matches_discriminator, absolutize, type_args, valid_text
from edge_agent.config.yaml_lines import KeyPath, format_key_path, parse_config_yaml

if TYPE_CHECKING:
    from edge_agent.config.agent import AgentConfig

DEFAULTS_SOURCE = "(built-in defaults)"
# A device config is a few KB; a file this large is the wrong file (a log, a video, /dev/zero).
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass
class LoadedConfig:
    """A validated config and where each of its values came from (for later checks' messages)."""

    config: AgentConfig
    source: str
    lines: dict[KeyPath, int] = field(default_factory=dict)
    origins: dict[KeyPath, str] = field(default_factory=dict)

    def where(self, key: KeyPath) -> tuple[str, int | None]:
        """(file, line) or (variable/flag, None) that set ``key``."""
        return _locate(key, self.lines, self.origins, self.source)


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Load, merge and validate the agent config; raise ConfigError listing every problem.

    ``path`` None means built-in defaults (plus variables and overrides). ``overrides`` are
    the CLI's flags: nested dicts or dotted keys (``{"camera.source": "0"}``); None values
    are ignored so unset flags can be passed as they are. ``environ`` defaults to os.environ.
    """
    return load_config_located(path, overrides, environ).config


def load_config_located(path: str | Path | None, overrides: Mapping[str, Any] | None = None,
                        environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """``load_config``, also telling where each value came from."""
    if path is None:
        return load_config_text(None, DEFAULTS_SOURCE, Path.cwd(), overrides, environ)
    p = Path(path)
    return load_config_text(read_config_file(p), str(p), _folder_of(p), overrides, environ)


def read_config_file(path: Path) -> str:
    """The file's text, refusing what cannot be a config: too large, not UTF-8, unreadable."""
    source = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError([ConfigIssue(source, None, "", f"larger than {MAX_CONFIG_BYTES // 1024**2} MiB: a "
                                                             "device config is a few KB; is this the right file?")])
        return raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(source, None, "", "config file not found (copy one of device_configs/ "
                                                         "there, or give the right path)")]) from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError, and so is a NUL in the path
        raise ConfigError([ConfigIssue(source, None, "", f"cannot read the config file: {exc}")]) from None


def _folder_of(path: Path) -> Path:
    try:
        return path.resolve().parent
    except (OSError, RuntimeError):  # a symlink loop; the read already succeeded, so rarely reached
        return path.absolute().parent


def load_config_text(text: str | None, source: str, base: Path, overrides: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Validate config ``text`` (None: no file) as if read from ``source`` in folder ``base``.

    Relative paths in the text are relative to ``base``. This is ``load_config`` without the
    file: the property tests throw generated text at it.
    """
    from edge_agent.config.agent import AgentConfig

    env = os.environ if environ is None else environ
    data: dict[Any, Any] = {}
    lines: dict[KeyPath, int] = {}
    issues: list[ConfigIssue] = []
    if text is not None:
        data, lines, issues = parse_config_yaml(text, source)
    issues += reject_clear_text_secrets(data, (), lines, source)  # removed from data: reported once
    data = absolutize(data, AgentConfig, base)

    origins: dict[KeyPath, str] = {}
    env_items, env_issues = environment_overrides(env)
    issues.extend(env_issues)
    for key, value, origin in env_items + flatten_overrides(overrides or {}):
        set_path(data, key, value)
        origins[key] = origin
    data, text_issues = valid_text(data, (), lambda key: _locate(key, lines, origins, source))
    issues.extend(text_issues)
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
    return LoadedConfig(config, source, lines, origins)


# -- validation errors -> lines ---------------------------------------------------------------
def _clean_loc(loc: tuple[Any, ...], data: Any) -> KeyPath:
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
        models = [a for a in type_args(cls.model_fields[seg].annotation)
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) > 1 and isinstance(cur, dict):
            models = [m for m in models if _matches_discriminator(m, cur)]
        cls = models[0] if len(models) == 1 else None
    return cls


def _message(err: Mapping[str, Any], key: KeyPath, root: type[BaseModel], data: Any) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        parent = _model_at(root, key[:-1], data)
        name = str(key[-1]) if key else "?"
        msg = f"unknown key '{_clip(name, 80)}'"
        if parent is not None:
            allowed = sorted(parent.model_fields)
            close = difflib.get_close_matches(name[:200], allowed, n=1, cutoff=0.6)
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
        msg += f" (got {_clip(repr(value), 100)})"
        if kind == "string_type" and isinstance(value, (int, float, bool)):
            msg += f"; write it in quotes: '{_clip(str(value), 100)}'"
    return msg


def _locate(key: KeyPath, lines: Mapping[KeyPath, int], origins: Mapping[KeyPath, str],
            source: str) -> tuple[str, int | None]:
    """Where a problem at ``key`` came from: the variable/override that set it, else the file line."""
    for n in range(len(key), -1, -1):
        prefix = key[:n]
        if prefix in origins:
            return origins[prefix], None
        if prefix in lines:
            return source, lines[prefix]
    return source, (1 if source != DEFAULTS_SOURCE else None)


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
