"""Every number in a config is finite and of a sane size, or the config is refused at its line.

Before: ``measurement.gsd_mm_per_px: .inf`` passed check-config and a run then sent 0 of 10
detections; ``camera.fps`` and ``health.heartbeat_timeout_s`` took ``.inf`` too; an infinite
``memory_limit`` crashed with OverflowError and an over-long path with OSError.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path

import annotated_types
import pytest
from pydantic import BaseModel

from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.config.base import ConfigSection

MINIMAL = "device_id: van-07\ncamera:\n  source: /dev/video0\n"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("section,key", [
    ("measurement", "gsd_mm_per_px"), ("camera", "fps"), ("health", "heartbeat_timeout_s"),
    ("measurement", "gsd_x_mm_per_px"), ("camera", "stall_timeout_s"), ("position", "max_fix_age_s"),
    ("mqtt", "outbox"), ("updates", "download_timeout_s"), ("reporting", "snapshots")])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+400", "'inf'"])
def test_infinite_and_nan_numbers_are_refused_with_key_and_line(tmp_path: Path, section: str, key: str, value: str):
    if key == "outbox":
        key, block = "outbox.max_age_s", "  outbox:\n    max_age_s: {v}\n"
    elif key == "snapshots":
        key, block = "snapshots.min_interval_s", "  snapshots:\n    min_interval_s: {v}\n"
    else:
        block = f"  {key}: {{v}}\n"
    if section == "camera":
        text = f"device_id: van-07\ncamera:\n{block.format(v=value)}  source: /dev/video0\n"
    else:
        text = MINIMAL + f"{section}:\n" + block.format(v=value)
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ={})
    [issue] = exc.value.issues
    written = next(n for n, text_line in enumerate(text.splitlines(), 1)
                   if text_line.strip().startswith(key.split(".")[-1] + ":"))
    assert (issue.key, issue.line) == (f"{section}.{key}", written)
    assert "finite number" in issue.message, issue.message


@pytest.mark.parametrize("key,value", [
    ("CRACKSEG_MEASUREMENT__GSD_MM_PER_PX", "inf"), ("CRACKSEG_CAMERA__FPS", "nan"),
    ("CRACKSEG_HEALTH__HEARTBEAT_TIMEOUT_S", "Infinity"), ("CRACKSEG_HEALTH__MEMORY_LIMIT", "9" * 400 + "T")])
def test_infinite_numbers_from_variables_are_refused(tmp_path: Path, key: str, value: str):
    with pytest.raises(ConfigError, match=rf"env {key}: "):
        load_config(write(tmp_path, MINIMAL), environ={key: value})


@pytest.mark.parametrize("text,key", [
    ("measurement:\n  gsd_mm_per_px: 5000\n", "measurement.gsd_mm_per_px"),
    ("camera:\n  source: x\n  fps: 100000\n", "camera.fps"),
    ("health:\n  heartbeat_timeout_s: 1.0e+12\n", "health.heartbeat_timeout_s"),
    ("health:\n  memory_limit: .inf\n", "health.memory_limit"),
    ("health:\n  memory_limit: 1.0e+300\n", "health.memory_limit"),
    ("mqtt:\n  outbox:\n    max_bytes: 5000T\n", "mqtt.outbox.max_bytes"),
    ("position:\n  provider: {type: fixed, lat: 1, lon: 2, alt_m: .inf}\n", "position.provider.alt_m"),
])
def test_nonsense_magnitudes_are_refused(tmp_path: Path, text: str, key: str):
    base = MINIMAL if not text.startswith("camera") else "device_id: van-07\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, base + text), environ={})
    assert [i.key for i in exc.value.issues] == [key]


def test_unusable_paths_are_config_errors_not_crashes(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"model.path: cannot look at .*File name too long"):
        load_config(write(tmp_path, MINIMAL + f"model:\n  path: {'a' * 300}\n"), environ={})
    with pytest.raises(ConfigError, match=r"mqtt.tls: .*cannot look at"):
        load_config(write(tmp_path, MINIMAL + f"mqtt:\n  url: mqtts://b\n  tls: {{ca_file: /{'b' * 300}}}\n"),
                    environ={})


def _models(root: type[BaseModel]) -> set[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    todo = [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for info in model.model_fields.values():
            stack = [info.annotation]
            while stack:
                tp = stack.pop()
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    todo.append(tp)
                stack.extend(typing.get_args(tp))
    return seen


def _is_float(tp: typing.Any) -> bool:
    return tp is float or any(_is_float(a) for a in typing.get_args(tp))


def test_every_section_refuses_inf_and_bounds_every_float():
    """A new section or float field that forgets the rule fails here, not on a vehicle."""
    unbounded = []
    for model in _models(AgentConfig):
        assert issubclass(model, ConfigSection), f"{model.__name__} must derive from ConfigSection"
        assert model.model_config.get("allow_inf_nan") is False and model.model_config.get("extra") == "forbid"
        for name, info in model.model_fields.items():
            if _is_float(info.annotation):
                upper = [m for m in info.metadata if isinstance(m, (annotated_types.Le, annotated_types.Lt))]
                if not upper or not all(math.isfinite(getattr(m, "le", getattr(m, "lt", math.inf))) for m in upper):
                    unbounded.append(f"{model.__name__}.{name}")
    assert not unbounded, f"float fields without an upper bound (add le=...): {unbounded}"
