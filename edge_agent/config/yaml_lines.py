"""YAML with line numbers, and with bounds that hostile or broken files cannot get past.

Why a hand-rolled line map on top of PyYAML: pydantic reports *where in the data* a value
is wrong (``('model', 'threads')``); an operator on a vehicle needs *where in the file*. The
YAML is composed into nodes (which carry marks), the data is built from those nodes while
every key's line is recorded, and each pydantic error location is later mapped back to a line.

Why the bounds: a config file of a few hundred bytes can describe billions of values through
nested aliases (``b: &b [*a, *a, ...]``, the "billion laughs"); walking them took 9 s and
1.3 GB at 7 levels and was killed at 6.4 GB at 9. PyYAML shares an anchored node between its
aliases, so composing is cheap: the cost is in every walk over the expanded data (ours, then
pydantic's). So the walk counts the values it reaches through aliases and merge keys and stops
past ``MAX_ALIAS_VALUES``, naming the alias's line. Nesting depth and node count are bounded
while composing (``yaml_compose``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from edge_agent.config.errors import ConfigError, ConfigIssue
from edge_agent.config.yaml_compose import MAX_DEPTH, BoundedLoader, refuse, yaml_error

KeyPath = tuple[Any, ...]

# Values reached through aliases and merge keys, in the whole file: real configs use a few
# dozen (``<<: *defaults`` in a handful of places); a "billion laughs" needs millions.
MAX_ALIAS_VALUES = 1_000

MERGE_TAG = "tag:yaml.org,2002:merge"
VALUE_TAG = "tag:yaml.org,2002:value"
_Origin = tuple[str, yaml.Mark]  # what is being expanded ("alias *a") and where
# key -> (key node, value node, the alias/merge it came through or None)
_NodePairs = dict[Any, tuple[yaml.Node, yaml.Node, "_Origin | None"]]


class _Builder:
    """Builds plain data from composed nodes, recording each key's line and counting alias values."""

    def __init__(self, loader: BoundedLoader, source: str):
        self.loader = loader
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self.issues: list[ConfigIssue] = []
        self.active: list[int] = []  # ids of the nodes being built or merged (to catch self-reference)
        self.expanding: _Origin | None = None  # the outermost alias or merge being expanded
        self.alias_values = 0

    # -- values --------------------------------------------------------------------------
    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        if len(path) > MAX_DEPTH:  # deeper than the text: aliases of aliases, blamed on the outermost
            refuse(self.source, self.expanding[1] if self.expanding else node.start_mark,
                   f"nested more than {MAX_DEPTH} levels deep (through aliases): a device config is at most 4 or 5; "
                   "flatten it")
        alias = self.loader.alias_targets.get(id(node))
        if alias is None:
            return self._build_node(node, path)
        anchor, target = alias
        if id(target) in self.active:
            refuse(self.source, node.start_mark, f"alias *{anchor} is used inside its own anchor &{anchor}: a "
                                                 "config value cannot contain itself; write the value out")
        with self._expanding((f"alias *{anchor}", node.start_mark)):
            return self._build_node(target, path)

    def _build_node(self, node: yaml.Node, path: KeyPath) -> Any:
        self._spend()
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        self.active.append(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            items = []
            for i, item in enumerate(node.value):
                self.lines[path + (i,)] = item.start_mark.line + 1
                items.append(self.build(item, path + (i,)))
            return items
        finally:
            self.active.pop()

    def scalar(self, node: yaml.ScalarNode) -> Any:
        """The scalar's Python value; a value PyYAML cannot convert is a config error, not a crash.

        Why the broad except: PyYAML's scalar constructors raise whatever the conversion raises
        (``int()``'s ValueError past 4300 digits, a KeyError for ``!!bool maybe``, an
        AttributeError for a malformed ``!!timestamp``); all of them mean "bad value here".
        """
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # see the docstring
            kind = node.tag.rsplit(":", 1)[-1]
            refuse(self.source, node.start_mark, f"cannot read the value {_short(node.value)} as {kind}: "
                                                 f"{_short(' '.join(str(exc).split()), 200, quote=False)}")

    @contextmanager
    def _expanding(self, origin: _Origin) -> Iterator[None]:
        """Values built inside count against MAX_ALIAS_VALUES, blamed on the outermost alias."""
        if self.expanding is not None:
            yield
            return
        self.expanding = origin
        try:
            yield
        finally:
            self.expanding = None

    def _spend(self) -> None:
        if self.expanding is None:
            return
        self.alias_values += 1
        if self.alias_values > MAX_ALIAS_VALUES:
            what, mark = self.expanding
            refuse(self.source, mark, f"{what}: aliases and merge keys in this file expand to more than "
                                      f"{MAX_ALIAS_VALUES} values (aliases of aliases multiply: a YAML 'billion "
                                      "laughs'); write the values out, or use fewer and flatter aliases")

    # -- mappings and merge keys ---------------------------------------------------------
    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[Any, Any]:
        pairs, merges = self._pairs(node, path, report=True)
        merged = self._merged(merges, path, 0)
        out: dict[Any, Any] = {}
        for key, (key_node, value_node, origin) in {**merged, **pairs}.items():
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            if origin is None:
                out[key] = self.build(value_node, path + (key,))
            else:  # brought in by a merge key: its values count like an alias's
                with self._expanding(origin):
                    out[key] = self.build(value_node, path + (key,))
        return out

    def _pairs(self, node: yaml.MappingNode, path: KeyPath, report: bool) -> tuple[_NodePairs, list[yaml.Node]]:
        """The explicit key -> (key node, value node) of a mapping, first one kept, and its ``<<`` value."""
        pairs: _NodePairs = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                if merges and report:
                    self.issues.append(ConfigIssue(self.source, key_node.start_mark.line + 1, format_key_path(path),
                                                   "duplicate merge key '<<': merge several mappings with "
                                                   "'<<: [*a, *b]'"))
                if not merges:
                    merges.append(value_node)
                continue
            key = self._key(key_node, path, report)
            if key is _BAD_KEY:
                continue
            if key in pairs:
                if report:
                    first = pairs[key][0].start_mark.line + 1
                    self.issues.append(ConfigIssue(self.source, key_node.start_mark.line + 1,
                                                   format_key_path(path + (key,)),
                                                   f"duplicate key (first set on line {first}); keep one"))
                continue
            pairs[key] = (key_node, value_node, None)
        return pairs, merges

    def _key(self, key_node: yaml.Node, path: KeyPath, report: bool) -> Any:
        if key_node.tag == VALUE_TAG:
            return "="  # PyYAML's own reading of a plain '=' key
        if not isinstance(key_node, yaml.ScalarNode):
            problem = f"a {'list' if isinstance(key_node, yaml.SequenceNode) else 'mapping'}"
        else:
            key = self.scalar(key_node)
            if key is not None and isinstance(key, (str, int, float, bool)):
                return key
            problem = _short(key, 60)
        if report:
            self.issues.append(ConfigIssue(self.source, key_node.start_mark.line + 1, format_key_path(path),
                                           f"keys must be plain words, got {problem}"))
        return _BAD_KEY

    def _merged(self, merges: list[yaml.Node], path: KeyPath, depth: int) -> _NodePairs:
        """Pairs brought in by ``<<:`` merge keys, YAML's way: earlier mappings win over later ones.

        Explicit keys of the mapping override merged ones (that is the point of
        ``<<: *defaults``), so an override is not a duplicate key. Every merged pair counts
        against MAX_ALIAS_VALUES: merges of merges multiply like aliases of aliases.
        """
        if depth > MAX_DEPTH and merges:
            refuse(self.source, merges[0].start_mark, f"merge keys '<<' nested more than {MAX_DEPTH} levels deep; "
                                                      "flatten them")
        out: _NodePairs = {}
        for value in merges:
            value_target = self._target(value)
            sources = list(value_target.value) if isinstance(value_target, yaml.SequenceNode) else [value]
            for source in sources:
                target = self._target(source)
                if not isinstance(target, yaml.MappingNode):
                    refuse(self.source, source.start_mark, "a merge key '<<' takes a mapping or a list of "
                                                           "mappings, e.g. '<<: *defaults'")
                if id(target) in self.active:
                    refuse(self.source, source.start_mark, "a merge key '<<' merges the mapping it is in: a "
                                                           "config value cannot contain itself")
                alias = self.loader.alias_targets.get(id(source))
                origin: _Origin = (f"alias *{alias[0]}" if alias else "merge key '<<'", source.start_mark)
                self.active.append(id(target))
                try:
                    with self._expanding(origin):
                        pairs, nested = self._pairs(target, path, report=False)
                        for key, (key_node, value_node, _) in {**self._merged(nested, path, depth + 1),
                                                               **pairs}.items():
                            self._spend()
                            out.setdefault(key, (key_node, value_node, self.expanding or origin))
                finally:
                    self.active.pop()
        return out

    def _target(self, node: yaml.Node) -> yaml.Node:
        alias = self.loader.alias_targets.get(id(node))
        return alias[1] if alias is not None else node


_BAD_KEY = object()


def _short(value: Any, limit: int = 40, quote: bool = True) -> str:
    """A value for a message: hostile files hold megabyte strings, the terminal needs a glance."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _parse(text: str, source: str) -> tuple[Any, dict[KeyPath, int], list[ConfigIssue], int]:
    loader: BoundedLoader | None = None
    try:
        loader = BoundedLoader(text, source)  # the reader refuses control characters already here
        node = loader.get_single_node()
        if node is None:
            return None, {}, [], 1
        builder = _Builder(loader, source)
        data = builder.build(node, ())
        return data, builder.lines, builder.issues, node.start_mark.line + 1
    except yaml.YAMLError as exc:
        raise yaml_error(exc, source) from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int], list[ConfigIssue]]:
    """Any YAML document as plain data, its key lines, and the problems that spoil no other value.

    Duplicate keys and non-word keys come back as issues (the first value kept); a syntax
    error, an alias bomb, a too deep or too large document raise ConfigError at once: after
    one of those nothing else in the file can be trusted.
    """
    data, lines, issues, _ = _parse(text, source)
    return data, lines, issues


def parse_config_yaml(text: str, source: str) -> tuple[dict[Any, Any], dict[KeyPath, int], list[ConfigIssue]]:
    """Like ``parse_yaml``, for a config file: the document must be a mapping of sections (or empty)."""
    data, lines, issues, root_line = _parse(text, source)
    if data is None:
        return {}, {}, []
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, root_line, "",
                                       f"the config must be a mapping of sections (device_id:, model:, camera:, "
                                       f"mqtt:, ...), not a {type(data).__name__}")])
    return data, lines, issues


def parse_yaml_with_lines(text: str, source: str) -> tuple[dict[Any, Any], dict[KeyPath, int]]:
    """The YAML document as plain data, plus the 1-based line of every mapping key / list item."""
    data, lines, issues = parse_config_yaml(text, source)
    if issues:
        raise ConfigError(issues)
    return data, lines


def format_key_path(path: KeyPath) -> str:
    """``('model', 'providers', 0)`` -> ``model.providers[0]``."""
    out = ""
    for seg in path:
        if isinstance(seg, int) and not isinstance(seg, bool):
            out += f"[{seg}]"
        else:
            out += ("." if out else "") + str(seg)
    return out
