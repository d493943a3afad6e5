"""Load the agent config: YAML with line numbers, environment overrides, secrets.

Why a hand-rolled line map on top of PyYAML: pydantic reports *where in the data* a value
is wrong (``('model', 'threads')``); an operator on a vehicle needs *where in the file*. The
YAML is composed into nodes (which carry marks), the data is built from those nodes while
every key's line is recorded, and each pydantic error location is mapped back to a line.

Precedence (later wins): YAML file < legacy variables (MODEL_PATH, LOG_LEVEL, ...) <
``CRACKSEG_<SECTION>__<KEY>`` variables < ``overrides`` (the CLI's flags).
"""

from __future__ import annotations

import difflib
import logging
import os
import stat
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml
from pydantic import BaseModel, ValidationError

from edge_agent.errors import UserError

if TYPE_CHECKING:
    from edge_agent.config.agent import AgentConfig

log = logging.getLogger(__name__)

ENV_PREFIX = "CRACKSEG_"
# CRACKSEG_* variables that are not config keys.
ENV_NOT_KEYS = frozenset({"CRACKSEG_CONFIG"})
# Keys whose value must never be written into the YAML in clear text.
SECRET_KEYS = frozenset({"password", "passwd", "passphrase", "secret", "token", "api_key", "private_key"})
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
DEFAULTS_SOURCE = "(built-in defaults)"

KeyPath = tuple[Any, ...]


class ConfigIssue(NamedTuple):
    """One problem: where (file and line, or the variable), which key, and what to do."""

    source: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(UserError):
    """An invalid config; ``str()`` lists every problem as ``FILE:LINE: key.path: message``."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class SecretError(ConfigError):
    """A configured secret (file, systemd credential, variable) that cannot be read."""

    def __init__(self, source: str, message: str):
        super().__init__([ConfigIssue(source, None, "", message)])


# -- YAML with line numbers -----------------------------------------------------------------
def parse_yaml_with_lines(text: str, source: str) -> tuple[dict, dict[KeyPath, int]]:
    """The YAML document as plain data, plus the 1-based line of every mapping key / list item."""
    data, lines, issues = _parse_yaml(text, source)
    if issues:
        raise ConfigError(issues)
    return data, lines


def _parse_yaml(text: str, source: str) -> tuple[dict, dict[KeyPath, int], list[ConfigIssue]]:
    """Like parse_yaml_with_lines, but duplicate keys are returned as issues (the first value kept).

    Syntax errors raise at once: after one, nothing else in the file can be trusted.
    """
    loader = yaml.SafeLoader(text)
    issues: list[ConfigIssue] = []
    lines: dict[KeyPath, int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}, []
        data = _build(loader, node, (), lines, issues, source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc).split())
        context = ""
        if exc.context:
            context = f" ({' '.join(exc.context.split())}"
            if exc.context_mark is not None and exc.context_mark is not mark:
                context += f" started on line {exc.context_mark.line + 1}"
            context += ")"
        raise ConfigError([ConfigIssue(source, mark.line + 1 if mark else None, "",
                                       f"YAML syntax error: {problem}{context}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(source, None, "", f"YAML error: {' '.join(str(exc).split())}")]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, node.start_mark.line + 1, "",
                                       f"the config must be a mapping of sections (device_id:, model:, camera:, "
                                       f"mqtt:, ...), not a {type(data).__name__}")])
    return data, lines, issues


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int],
           issues: list[ConfigIssue], source: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves "<<: *anchor" merge keys like safe_load does
        out: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) or key is None:
                issues.append(ConfigIssue(source, line, format_key_path(path), f"keys must be plain words, got "
                                                                             f"{key!r}"))
                continue
            if key in out:
                issues.append(ConfigIssue(source, line, format_key_path(path + (key,)),
                                          f"duplicate key (first set on line {lines[path + (key,)]}); keep one"))
                continue
            lines[path + (key,)] = line
            out[key] = _build(loader, value_node, path + (key,), lines, issues, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            items.append(_build(loader, item, path + (i,), lines, issues, source))
        return items
    return loader.construct_object(node, deep=True)


def format_key_path(path: KeyPath) -> str:
    """``('model', 'providers', 0)`` -> ``model.providers[0]``."""
    out = ""
    for seg in path:
        if isinstance(seg, int) and not isinstance(seg, bool):
            out += f"[{seg}]"
        else:
            out += ("." if out else "") + str(seg)
    return out


def _reject_clear_text_secrets(data: Any, path: KeyPath, lines: dict[KeyPath, int], source: str) -> list[ConfigIssue]:
    """Report clear-text secret keys and drop them from ``data`` (so they are reported once)."""
    issues = []
    if isinstance(data, dict):
        for key, value in list(data.items()):
            if isinstance(key, str) and key.lower() in SECRET_KEYS and value is not None:
                issues.append(ConfigIssue(
                    source, lines.get(path + (key,)), format_key_path(path + (key,)),
                    f"secrets must not be written in the config file: use {key}_file: /path/to/file (mode 600), "
                    f"{key}_credential: NAME (systemd LoadCredential=) or {key}_env: VARIABLE; see "
                    "docs/operations.md"))
                del data[key]
            else:
                issues.extend(_reject_clear_text_secrets(value, path + (key,), lines, source))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            issues.extend(_reject_clear_text_secrets(item, path + (i,), lines, source))
    return issues


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


# -- environment and overrides ----------------------------------------------------------------
def _env_value(raw: str) -> Any:
    """Variables are text; pydantic converts "2" / "true" itself. ``[a, b]`` is a YAML list."""
    text = raw.strip()
    if text == "" or text.lower() in ("null", "none", "~"):
        return None
    if text[0] in "[{":
        return yaml.safe_load(text)
    return text


def environment_overrides(environ: Mapping[str, str]) -> tuple[list[tuple[KeyPath, Any, str]], list[ConfigIssue]]:
    """(key path, value, source) from the legacy variables and ``CRACKSEG_<SECTION>__<KEY>``."""
    out: list[tuple[KeyPath, Any, str]] = []
    issues: list[ConfigIssue] = []
    for name, path in LEGACY_ENV.items():
        if name in environ:
            value = _env_value(environ[name])
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
            value = _env_value(environ[name])
        except yaml.YAMLError as exc:
            issues.append(ConfigIssue(f"env {name}", None, format_key_path(parts),
                                      f"not a valid YAML list/mapping: {' '.join(str(exc).split())}"))
            continue
        out.append((parts, value, f"env {name}"))
    return out, issues


def _flatten_overrides(overrides: Mapping[str, Any], prefix: KeyPath = ()) -> list[tuple[KeyPath, Any, str]]:
    """``{"camera.source": x}`` or ``{"camera": {"source": x}}``; None means "flag not given"."""
    out = []
    for key, value in overrides.items():
        path = prefix + tuple(str(key).split("."))
        if isinstance(value, Mapping):
            out.extend(_flatten_overrides(value, path))
        elif value is not None:
            out.append((path, value, "override"))
    return out


def _set_path(data: dict, path: KeyPath, value: Any) -> None:
    cur = data
    for seg in path[:-1]:
        if not isinstance(cur.get(seg), dict):
            cur[seg] = {}
        cur = cur[seg]
    cur[path[-1]] = value


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
        data, lines, issues = _parse_yaml(text, source)
        base = p.resolve().parent
    issues += _reject_clear_text_secrets(data, (), lines, source)  # removed from data: reported once
    data = _absolutize(data, AgentConfig, base)

    origins: dict[KeyPath, str] = {}
    env_items, env_issues = environment_overrides(env)
    issues.extend(env_issues)
    for key, value, origin in env_items + _flatten_overrides(overrides or {}):
        _set_path(data, key, value)
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


def read_secret(*, file: str | Path | None = None, credential: str | None = None, env_var: str | None = None,
                what: str = "secret", environ: Mapping[str, str] | None = None) -> str | None:
    """A secret from a systemd credential, a file, or a variable (first configured wins); None if none.

    An empty credential counts as "not configured": install.sh creates every ``LoadCredential=``
    source empty (a missing source would fail the start), so the service runs before the
    operator has provisioned, e.g., a model-signing key.
    """
    env = os.environ if environ is None else environ
    if credential:
        target = credential_path(credential, what, env)
        if target is None:
            return None
        try:
            return target.read_text(encoding="utf-8").rstrip("\r\n") or None
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"{what} credential '{credential}'", f"cannot read {target}: {exc}") from None
    if file:
        target = Path(file).expanduser()
        try:
            st = target.stat()
            value = target.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise SecretError(f"{what} file {target}", "not found: create it (chmod 600) or fix the path") from None
        except OSError as exc:
            raise SecretError(f"{what} file {target}", f"cannot read it: {exc.strerror or exc}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s file %s is readable by other users; chmod 600 it", what, target)
        return value or None
    if env_var:
        return env.get(env_var) or None
    return None


def credential_path(name: str, what: str = "secret", environ: Mapping[str, str] | None = None) -> Path | None:
    """Path of systemd credential ``name`` (for binary-safe consumers such as key loaders); None if empty."""
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise SecretError(f"{what} credential '{name}'",
                          "$CREDENTIALS_DIRECTORY is not set (the agent was not started by systemd with "
                          f"LoadCredential={name}:...); outside systemd use a *_file setting instead")
    path = Path(directory) / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SecretError(f"{what} credential '{name}'",
                          f"not passed to the service: add LoadCredential={name}:/etc/crackseg-edge/credentials/"
                          f"{name} to the unit (systemctl edit crackseg-edge)") from None
    return path if size > 0 else None


def model_public_key(model: Any, environ: Mapping[str, str] | None = None) -> Path | None:
    """The bundle-signing public key file of ``cfg.model`` (file or systemd credential), or None.

    None with ``require_signature`` is an error here rather than at the first model update.
    """
    path: Path | None = None
    if model.public_key_file is not None:
        path = Path(model.public_key_file)
    elif model.public_key_credential:
        path = credential_path(model.public_key_credential, "model.public_key_credential", environ)
    if path is None and model.require_signature:
        raise SecretError("model.require_signature", "is true but no public key is provisioned: put the ed25519 "
                          "public key in /etc/crackseg-edge/credentials/model-signing.pub (or set "
                          "model.public_key_file)")
    return path


def _summary(cfg: Any) -> str:
    model = cfg.model
    model_text = str(model.path) if model.path else "shipped reference bundle"
    runtime = f"{model.backend}, {model.threads or 'all'} thread(s)"
    if model.backend == "onnx":
        runtime += f", providers {'/'.join(model.providers)}"
    mqtt = cfg.mqtt
    mqtt_text = getattr(mqtt, "url", None) or ":".join(
        str(v) for v in (getattr(mqtt, "host", None), getattr(mqtt, "port", None)) if v is not None) or "configured"
    http = f"http://{cfg.http.host}:{cfg.http.port}" if cfg.http.enabled else "http off"
    return (f"device {cfg.device_id}; model {model_text} ({runtime}); camera {cfg.camera.source}; mqtt {mqtt_text}; "
            f"{http}; state {cfg.state_dir}")


def check_config_main(path: str | Path) -> int:
    """``crackseg-edge check-config FILE``: every problem on stderr (exit 2), or ``OK: <summary>`` (exit 0)."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        print(f"{len(exc.issues)} problem(s) in {path}", file=sys.stderr)
        return 2
    if cfg.http.enabled and cfg.http.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: {path}: http.host {cfg.http.host} exposes /metrics and /model/info beyond this machine",
              file=sys.stderr)
    print(f"OK: {path}: {_summary(cfg)}")
    return 0
