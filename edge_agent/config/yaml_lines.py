"""YAML with line numbers.

Why a hand-rolled line map on top of PyYAML: pydantic reports *where in the data* a value
is wrong (``('model', 'threads')``); an operator on a vehicle needs *where in the file*. The
YAML is composed into nodes (which carry marks), the data is built from those nodes while
every key's line is recorded, and each pydantic error location is later mapped back to a line.
"""

from __future__ import annotations

from typing import Any

import yaml

from edge_agent.config.errors import ConfigError, ConfigIssue

KeyPath = tuple[Any, ...]


def parse_yaml_with_lines(text: str, source: str) -> tuple[dict[Any, Any], dict[KeyPath, int]]:
    """The YAML document as plain data, plus the 1-based line of every mapping key / list item."""
    data, lines, issues = parse_config_yaml(text, source)
    if issues:
        raise ConfigError(issues)
    return data, lines


def parse_config_yaml(text: str, source: str) -> tuple[dict[Any, Any], dict[KeyPath, int], list[ConfigIssue]]:
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
