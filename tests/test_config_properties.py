"""Property tests: whatever text or values a config holds, loading ends in a config or a ConfigError.

Generated YAML text, values of every type in every field (non-finite and huge numbers,
nesting, odd strings), anchors/aliases/merge keys and environment variables are thrown at
the loader. The properties: no exception other than ConfigError, no case taking more than
CASE_SECONDS of this process's CPU time (no hang, no alias expansion; CPU time, not wall
clock, so a busy machine does not fail it), every issue a single ``SOURCE[:LINE]: ...`` line, and
a config that loads holds only finite numbers. 10,000 cases per run in all (2,000 examples
of 5 each; 7,000 of them random text, the cheapest): about 20 s on a 2-core machine at load 7.
"""

from __future__ import annotations

import json
import math
import resource
import string
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from edge_agent.config import AgentConfig, ConfigError
from edge_agent.config.loader import load_config_text

SOURCE = "gen.yaml"
BASE = Path("/nonexistent-crackseg-config-dir")  # relative model paths resolve here: never a real file
MINIMAL = {"device_id": "van-07", "camera": {"source": "/dev/video0"}}
# Each example loads BATCH cases: hypothesis's own cost per example (~2 ms on a busy machine) is
# then paid once per BATCH loads. CASE_SECONDS bounds the CPU time (time.process_time) of every
# single load (a small one takes ~2 ms); hypothesis's wall-clock deadline is off (shared machines).
BATCH = 5
CASE_SECONDS = 0.5
SETTINGS = {"deadline": None, "database": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
CASES = [0]


@pytest.fixture(autouse=True, scope="module")
def bounded_memory() -> Iterator[None]:
    """All examples together may not grow the process's peak memory by more than 256 MiB."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"\n{CASES[0]} generated configs loaded; peak memory grew by {grown_mib:.0f} MiB")
    assert grown_mib < 256, f"peak memory grew by {grown_mib:.0f} MiB"


def load(text: str, environ: dict[str, str] | None = None) -> AgentConfig | None:
    """The properties every outcome must have; the config when it loaded, None when refused."""
    CASES[0] += 1
    t0 = time.process_time()
    try:
        loaded = load_config_text(text, SOURCE, BASE, environ=environ or {})
    except ConfigError as exc:
        cpu = time.process_time() - t0
        assert cpu < CASE_SECONDS, f"{cpu:.2f} s of CPU to refuse {text[:200]!r}"
        assert exc.issues
        for issue in exc.issues:
            shown = str(issue)
            assert "\n" not in shown and "\r" not in shown, shown
            assert issue.source == SOURCE or issue.source.startswith("env "), issue
            assert issue.line is None or 1 <= issue.line <= text.count("\n") + 2, issue
        return None
    cpu = time.process_time() - t0
    assert cpu < CASE_SECONDS, f"{cpu:.2f} s of CPU to load {text[:200]!r}"
    assert_finite(loaded.config.model_dump())
    return loaded.config


def assert_finite(value: Any) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for v in value.values():
            assert_finite(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            assert_finite(v)


# -- a small flow-style YAML emitter (json is C-fast; YAML 1.1 needs its own floats) ---------------
def emit(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:  # YAML 1.1 floats need a dot
            text = text.replace("e", ".0e", 1)
        return text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{emit(k)}: {emit(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(emit(v) for v in value) + "]"


def document(data: dict[Any, Any]) -> str:
    return "".join(f"{emit(k)}: {emit(v)}\n" for k, v in data.items())


def set_at(data: dict[Any, Any], path: tuple[str, ...], value: Any) -> dict[Any, Any]:
    out = json.loads(json.dumps(data))
    cur = out
    for seg in path[:-1]:
        cur = cur.setdefault(seg, {})
    cur[path[-1]] = value
    return out


def field_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf key of the config, nested sections followed (all union members)."""
    out = []
    for name, info in model.model_fields.items():
        nested = [a for a in _args(info.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        out.append(prefix + (name,))
        for sub in nested:
            out.extend(field_paths(sub, prefix + (name,)))
    return out


def _args(tp: Any) -> list[Any]:
    args = typing.get_args(tp)
    return [tp] if not args else [a for x in args for a in _args(x)]


FIELD_PATHS = sorted(set(field_paths(AgentConfig)))

nasty_floats = st.one_of(
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, -0.0, 0.0, 1e15, 1e-15]),
    st.floats(allow_nan=True, allow_infinity=True))


class Raw(str):
    """Text emitted into the YAML as it is (numbers too long for Python's int(), odd tokens)."""


nasty_ints = st.one_of(st.sampled_from([0, -1, 2**31, 2**63, 10**30, -(10**30)]), st.integers(),
                       st.integers(1, 6000).map(lambda n: Raw("9" * n)))
nasty_text = st.one_of(
    st.sampled_from(["", " ", "inf", "-inf", "nan", "NaN", "1e400", "Infinity", "512M", "9" * 400 + "T", "~",
                     "../../etc/passwd", "a" * 300, "\x00", "\ud800", "mqtt://u:p@h", "0x10", "1_000", "true"]),
    st.text(max_size=30))
scalars = st.one_of(st.none(), st.booleans(), nasty_ints, nasty_floats, nasty_text)
keys = st.one_of(st.sampled_from(sorted({p[-1] for p in FIELD_PATHS})), st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(keys, inner, max_size=3)),
                      max_leaves=6)


@settings(max_examples=100, **SETTINGS)
@given(cases=st.lists(st.tuples(st.sampled_from(FIELD_PATHS), values), min_size=BATCH, max_size=BATCH))
def test_any_value_in_any_field(cases: list[tuple[tuple[str, ...], Any]]):
    for path, value in cases:
        load(document(set_at(MINIMAL, path, value)))


@settings(max_examples=250, **SETTINGS)
@given(cases=st.lists(st.tuples(st.sampled_from(FIELD_PATHS), st.one_of(nasty_floats, nasty_ints)),
                      min_size=BATCH, max_size=BATCH))
def test_numbers_in_any_field_are_finite_or_refused(cases: list[tuple[tuple[str, ...], float | int | Raw]]):
    for path, value in cases:
        cfg = load(document(set_at(MINIMAL, path, value)))
        if cfg is not None and isinstance(value, float) and not math.isfinite(value):
            raise AssertionError(f"{'.'.join(path)} accepted {value}")


YAML_ALPHABET = string.ascii_lowercase[:6] + string.digits[:4] + " \n\t:-[]{},&*!|>'\"#%@`?.~<=_\\"
# Text over YAML's own characters, drawn as bytes (one draw per text: hypothesis's per-character
# draws cost more than parsing the text).
yaml_like_text = st.binary(max_size=120).map(lambda data: "".join(YAML_ALPHABET[b % len(YAML_ALPHABET)]
                                                                 for b in data))


@settings(max_examples=1400, **SETTINGS)
@given(texts=st.lists(st.one_of(yaml_like_text, st.text(max_size=60)), min_size=BATCH, max_size=BATCH))
def test_random_text(texts: list[str]):
    for text in texts:
        load(text)


SCALARS = ["1", "-2", "x", "cpu", "/dev/v0", ".inf", ".nan", "1.0e+400", "null"]
TOP_KEYS = ["x0", "x1", "camera", "model", "measurement", "updates", "x2"]


def aliased_document(choices: list[int]) -> str:
    """A document full of anchors, aliases and merge keys (chains, fans, self-references), decoded
    from a list of small numbers: one draw per document keeps hypothesis's cost low, and shrinking
    the list shrinks the document. At most ~40 nodes: the danger is aliases of aliases, not size.
    """
    it = iter(choices)
    anchors: list[str] = []
    mapping_anchors: list[str] = []  # what a merge key takes (mostly: a few merges of lists stay)
    budget = [40]

    def pick(n: int) -> int:
        return next(it, 0) % n

    def node(depth: int) -> str:
        budget[0] -= 1
        choice = pick(10 if depth < 4 and budget[0] > 0 else 4)
        if choice <= 1 and anchors:
            return "*" + ("undefined" if pick(200) == 199 else anchors[pick(len(anchors))])
        if choice <= 3:
            return SCALARS[pick(len(SCALARS))]
        anchor = ""
        if pick(2):
            anchor = f"a{budget[0]}"  # the budget only goes down: a unique name
            if pick(10) == 0:
                anchors.append(anchor)  # defined before its content ends: a self-reference
        width = pick(10)
        if choice <= 6:
            text = "[" + ", ".join(node(depth + 1) for _ in range(width)) + "]"
        else:
            items = []
            pool = mapping_anchors if pick(8) else anchors
            if pool and pick(2):  # the merge comes first, so only anchors defined before it
                merged = ["*" + pool[pick(len(pool))] for _ in range(1 + pick(9))]
                items.append("<<: " + (merged[0] if len(merged) == 1 else "[" + ", ".join(merged) + "]"))
            items += [f"k{i}: {node(depth + 1)}" for i in range(width)]
            text = "{" + ", ".join(items) + "}"
            if anchor:
                mapping_anchors.append(anchor)
        if anchor and anchor not in anchors:
            anchors.append(anchor)
        return f"&{anchor} {text}" if anchor else text

    keys = [k for k in TOP_KEYS if pick(2)] or ["x0"]
    body = "".join(f"{k}: {node(0)}\n" for k in keys)
    return "device_id: van-07\n" + ("" if "camera" in keys else "camera: {source: x}\n") + body


aliased_documents = st.binary(min_size=200, max_size=200).map(lambda data: aliased_document(list(data)))


@settings(max_examples=150, **SETTINGS)
@given(texts=st.lists(aliased_documents, min_size=BATCH, max_size=BATCH))
def test_aliases_and_merges_stay_bounded(texts: list[str]):
    for text in texts:
        load(text)


env_names = st.one_of(st.sampled_from(["MODEL_PATH", "LOG_LEVEL", "BATCH_SIZE", "MAX_WORKERS", "MEMORY_LIMIT",
                                       "INFERENCE_DEVICE", "MODEL_VERSION"]),
                      st.builds(lambda p: "CRACKSEG_" + "__".join(p).upper(), st.sampled_from(FIELD_PATHS)),
                      st.text(alphabet=string.ascii_uppercase + "_", max_size=12).map(lambda s: "CRACKSEG_" + s))
env_values = st.one_of(nasty_text, yaml_like_text.map(lambda s: "[" + s[:40]),
                       values.map(emit))


@settings(max_examples=100, **SETTINGS)
@given(environs=st.lists(st.dictionaries(env_names, env_values.filter(lambda v: "\x00" not in v), max_size=4),
                         min_size=BATCH, max_size=BATCH))
def test_environment_variables(environs: list[dict[str, str]]):
    for environ in environs:
        load(document(MINIMAL), environ)
