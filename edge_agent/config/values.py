"""The merged config data made fit for validation: relative paths anchored to the file.

Why before pydantic: the service runs with the working directory ``/``, so relative paths are
made relative to the config file here, where the file's folder is known.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel


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

