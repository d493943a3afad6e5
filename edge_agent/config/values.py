"""The merged config data made fit for validation: relative paths anchored, non-text refused.

Why before pydantic: the service runs with the working directory ``/``, so relative paths are
made relative to the config file here, where the file's folder is known; and strings that are
not Unicode (lone surrogates) make pydantic-core raise instead of report, so they are caught
and located here first.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel

from edge_agent.config.errors import ConfigIssue
from edge_agent.config.yaml_lines import KeyPath, format_key_path


def _clip(text: str, limit: int) -> str:
    """Echo at most ``limit`` characters of a value: hostile files hold megabyte strings."""
    return text if len(text) <= limit else text[:limit] + "..."


def type_args(tp: Any) -> list[Any]:
    """Flatten Optional/Union/Annotated into the concrete types a field may hold."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return type_args(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [t for a in typing.get_args(tp) for t in type_args(a)]
    return [tp]


def absolutize(value: Any, tp: Any, base: Path) -> Any:
    """Make relative paths of Path-typed fields relative to the config file's folder.

    Why: the service runs with the working directory ``/``; a path written next to the
    config (``model: {path: models/x.onnx}``) must not depend on where the agent started.
    """
    for arg in type_args(tp):
        if isinstance(arg, type) and issubclass(arg, BaseModel) and isinstance(value, dict):
            if not _matches_discriminator(arg, value):
                continue  # another member of a union (position.provider: gpsd, nmea, nmea-file...)
            for name, info in arg.model_fields.items():
                key = info.alias or name
                if key in value:
                    value[key] = absolutize(value[key], info.annotation, base)
            return value
        if isinstance(arg, type) and issubclass(arg, PurePath) and isinstance(value, str) and value:
            try:
                p = Path(os.path.expanduser(value))
            except ValueError:  # a NUL in the text: left for the field's validation to refuse
                return value
            return str(p if p.is_absolute() else base / p)
        if typing.get_origin(arg) in (list, tuple) and isinstance(value, list):
            inner = typing.get_args(arg)
            if inner:
                return [absolutize(v, inner[0], base) for v in value]
    return value


def valid_text(value: Any, path: KeyPath, locate: Callable[[KeyPath], tuple[str, int | None]]
               ) -> tuple[Any, list[ConfigIssue]]:
    """Text that is not Unicode (lone surrogates) made printable, each occurrence an issue.

    Why: YAML's ``"\\ud800"`` escape and non-UTF-8 bytes in a variable (Python decodes them to
    lone surrogates) give strings that pydantic-core cannot take: it raises UnicodeEncodeError
    instead of a validation error.
    """
    def fix(text: str, key: KeyPath, what: str) -> tuple[str, list[ConfigIssue]]:
        try:
            text.encode("utf-8")
            return text, []
        except UnicodeEncodeError:
            shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
            where, line = locate(key)
            return shown, [ConfigIssue(where, line, format_key_path(key), f"the {what} '{_clip(shown, 60)}' is "
                                       "not valid text (a lone UTF-16 surrogate or non-UTF-8 bytes)")]

    if isinstance(value, str):
        return fix(value, path, "value")
    issues: list[ConfigIssue] = []
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str):
                _, found = fix(k, path + (k,), "key")
                if found:  # reported; left out so that nothing below trips on it
                    issues += found
                    continue
            out[k], found = valid_text(v, path + (k,), locate)
            issues += found
        return out, issues
    if isinstance(value, list):
        items = []
        for i, v in enumerate(value):
            item, found = valid_text(v, path + (i,), locate)
            items.append(item)
            issues += found
        return items, issues
    return value, issues


def _matches_discriminator(model: type[BaseModel], value: dict) -> bool:
    """False when ``value`` names a ``type`` that ``model``'s Literal ``type`` field does not allow."""
    info = model.model_fields.get("type")
    if info is None or "type" not in value or typing.get_origin(info.annotation) is not typing.Literal:
        return True
    return value["type"] in typing.get_args(info.annotation)
