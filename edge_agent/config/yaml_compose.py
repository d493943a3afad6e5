"""A PyYAML composer with bounds: depth, node count, and aliases that keep their own position.

Why: PyYAML's composer recurses once per nesting level (a deeply nested file ends in
RecursionError, not an error message) and composes an alias to its anchor's very node, which
loses where the alias was written. A hostile or broken config must end in a ConfigError that
names a line, so this composer counts, limits and remembers.
"""

from __future__ import annotations

from typing import Any, NoReturn, cast

import yaml

from edge_agent.config.errors import ConfigError, ConfigIssue

# A device config is a few KB with a few hundred values, nested at most 4 deep; these
# bounds are far above any real config and far below what hurts a Raspberry Pi.
MAX_DEPTH = 20
MAX_NODES = 20_000


def refuse(source: str, mark: yaml.Mark | None, message: str) -> NoReturn:
    raise ConfigError([ConfigIssue(source, mark.line + 1 if mark is not None else None, "", message)])


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer bounds depth and node count and remembers where each alias is.

    An alias normally composes to the very node of its anchor, which loses the alias's own
    position; here it composes to a shallow copy carrying the alias's marks, and
    ``alias_targets`` maps the copy back to its anchor name and anchored node.
    """

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source
        self.depth = 0
        self.nodes = 0
        self.alias_targets: dict[int, tuple[str, yaml.Node]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        self.nodes += 1
        if self.nodes > MAX_NODES:
            refuse(self.source, event.start_mark, f"more than {MAX_NODES} values: a device config has a few "
                                                  "hundred; is this the right file?")
        if isinstance(event, yaml.AliasEvent):
            target = super().compose_node(parent, index)  # raises on an undefined alias
            alias = _copy_node(target, event.start_mark, event.end_mark)
            self.alias_targets[id(alias)] = (str(event.anchor), alias if target is None else target)
            return alias
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                refuse(self.source, event.start_mark, f"nested more than {MAX_DEPTH} levels deep: a device "
                                                      "config is at most 4 or 5; flatten it")
            return cast(yaml.Node, super().compose_node(parent, index))
        finally:
            self.depth -= 1


def _copy_node(node: yaml.Node | None, start: Any, end: Any) -> yaml.Node:
    """``node`` with another position; the value (list of children) is shared, not copied."""
    if isinstance(node, yaml.ScalarNode):
        return yaml.ScalarNode(node.tag, node.value, start, end, style=node.style)
    if isinstance(node, yaml.SequenceNode):
        return yaml.SequenceNode(node.tag, node.value, start, end, flow_style=node.flow_style)
    if isinstance(node, yaml.MappingNode):
        return yaml.MappingNode(node.tag, node.value, start, end, flow_style=node.flow_style)
    raise TypeError(f"unexpected YAML node {type(node).__name__}")  # pragma: no cover - PyYAML has three kinds


def yaml_error(exc: yaml.YAMLError, source: str) -> ConfigError:
    """A PyYAML error as one ``FILE:LINE: YAML syntax error: ...`` issue."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc).split())
        context = ""
        if exc.context:
            context = f" ({' '.join(exc.context.split())}"
            if exc.context_mark is not None and exc.context_mark is not mark:
                context += f" started on line {exc.context_mark.line + 1}"
            context += ")"
        return ConfigError([ConfigIssue(source, mark.line + 1 if mark else None, "",
                                        f"YAML syntax error: {problem}{context}")])
    return ConfigError([ConfigIssue(source, None, "", f"YAML error: {' '.join(str(exc).split())}")])
