"""A renderer for the subset of Helm's template language that deploy/helm/crackseg-office uses.

Why: no ``helm`` binary can be installed here (it is neither on PyPI nor in Debian), and a chart
that was never rendered is a chart nobody checked. This renders the templates the way ``helm
template`` does for the constructs the chart uses, so the tests can validate the manifests
against the Kubernetes schemas and cross-check the commands against the real CLI.

Supported: ``{{ }}`` with ``-`` trimming, ``{{/* comments */}}``, ``define``/``include``,
``if``/``else``/``end`` (nesting), ``.Values``/``.Release``/``.Chart`` paths, ``.Files.Get``,
parenthesised sub-expressions, pipelines, and the functions in ``FUNCTIONS``. Anything else
(``range``, ``with``, variables, an unknown function) raises ``Unsupported``: a chart change that
needs more must extend this file (and be checked with a real ``helm template``), not pass silently.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(\()|(\))|(\|)|([^\s()|"]+))')


class Unsupported(Exception):
    """A construct this renderer does not implement."""


class RequiredValueError(Exception):
    """``required`` failed: helm would stop with this message."""


@dataclass
class Node:
    kind: str                      # text | action | if | define
    text: str = ""
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)


def _lex(src: str) -> list[tuple[str, str]]:
    """[(kind, text)] with Helm's whitespace trimming applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        out.append(("text", text))
        out.append(("action", m.group(2).strip()))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = src[pos:]
    out.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    return out


def _parse(tokens: list[tuple[str, str]]) -> list[Node]:
    root: list[Node] = []
    stack: list[tuple[Node | None, list[Node]]] = [(None, root)]
    for kind, text in tokens:
        current = stack[-1][1]
        if kind == "text":
            if text:
                current.append(Node("text", text))
            continue
        if text.startswith("/*"):
            continue
        word = text.split(None, 1)[0] if text else ""
        if word in ("if", "define"):
            node = Node(word, text.split(None, 1)[1])
            current.append(node)
            stack.append((node, node.body))
        elif word == "else":
            node = stack[-1][0]
            if node is None or node.kind != "if" or text != "else":
                raise Unsupported(f"{{{{ {text} }}}}")
            stack[-1] = (node, node.orelse)
        elif word == "end":
            stack.pop()
        elif word in ("range", "with", "block", "template", "break", "continue") or text.startswith("$"):
            raise Unsupported(f"{{{{ {text} }}}}")
        else:
            current.append(Node("action", text))
    if len(stack) != 1:
        raise Unsupported("unbalanced if/define/end")
    return root


def _truthy(v: Any) -> bool:
    return v not in (None, False, 0, "", [], {})


def _to_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (dict, list)):
        raise Unsupported("printing a map or list without toYaml")
    return str(v)


def _indent(n: int, s: str) -> str:
    return "\n".join((" " * n + line) if line else line for line in s.split("\n"))


def _to_yaml(v: Any) -> str:
    if v in (None, {}, []):
        return "{}" if v == {} else "[]" if v == [] else "null"
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")


def _required(msg: str, v: Any) -> Any:
    if not _truthy(v):
        raise RequiredValueError(msg)
    return v


def _printf(fmt: str, *args: Any) -> str:
    return re.sub(r"%[sdv]", lambda _m: "{}", fmt.replace("{", "{{").replace("}", "}}")).format(
        *[_to_text(a) for a in args])


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quote": lambda v: json.dumps(_to_text(v)),
    "default": lambda d, v=None: v if _truthy(v) else d,
    "required": _required,
    "toYaml": _to_yaml,
    "nindent": lambda n, s: "\n" + _indent(int(n), _to_text(s)),
    "indent": lambda n, s: _indent(int(n), _to_text(s)),
    "trunc": lambda n, s: _to_text(s)[: int(n)],
    "trimSuffix": lambda suf, s: _to_text(s)[: -len(suf)] if suf and _to_text(s).endswith(suf) else _to_text(s),
    "printf": _printf,
    "not": lambda v: not _truthy(v),
    "b64enc": lambda s: base64.b64encode(_to_text(s).encode()).decode(),
    "int": lambda v: int(float(v)),
}


class Chart:
    """A chart folder rendered with given values (merged over values.yaml)."""

    def __init__(self, path: Path, *, release: str = "office", namespace: str = "default"):
        self.path = path
        self.meta = yaml.safe_load((path / "Chart.yaml").read_text())
        self.defaults = yaml.safe_load((path / "values.yaml").read_text())
        self.release = {"Name": release, "Namespace": namespace, "Service": "Helm"}
        self.templates = {p.name: _parse(_lex(p.read_text())) for p in sorted((path / "templates").iterdir())
                          if p.suffix in (".yaml", ".tpl", ".txt")}
        self.defines: dict[str, list[Node]] = {}
        for nodes in self.templates.values():
            for n in nodes:
                if n.kind == "define":
                    self.defines[json.loads(n.text.strip())] = n.body

    def render(self, values: dict[str, Any] | None = None) -> dict[str, str]:
        """Template file name -> rendered text (``_*.tpl`` excluded), like ``helm template``."""
        ctx = {"Values": _merge(self.defaults, values or {}), "Release": self.release,
               "Chart": {"Name": self.meta["name"], "Version": self.meta["version"],
                         "AppVersion": self.meta.get("appVersion", "")},
               "Files": {"Get": lambda rel: (self.path / rel).read_text()}}
        return {name: self._render(nodes, ctx) for name, nodes in self.templates.items()
                if not name.startswith("_")}

    def manifests(self, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        docs = []
        for name, text in self.render(values).items():
            if name.endswith(".yaml"):
                docs += [d for d in yaml.safe_load_all(text) if d]
        return docs

    # -- evaluation -----------------------------------------------------------------------------
    def _render(self, nodes: list[Node], ctx: dict[str, Any]) -> str:
        out = []
        for n in nodes:
            if n.kind == "text":
                out.append(n.text)
            elif n.kind == "action":
                out.append(_to_text(self._pipeline(n.text, ctx)))
            elif n.kind == "if":
                out.append(self._render(n.body if _truthy(self._pipeline(n.text, ctx)) else n.orelse, ctx))
        return "".join(out)

    def _pipeline(self, expr: str, ctx: dict[str, Any]) -> Any:
        tokens = _tokens(expr)
        value, pos = self._command(tokens, 0, ctx, None)
        while pos < len(tokens) and tokens[pos] == "|":
            value, pos = self._command(tokens, pos + 1, ctx, (value,))
        if pos != len(tokens):
            raise Unsupported(f"cannot parse {expr!r}")
        return value

    def _command(self, tokens: list[str], pos: int, ctx: dict[str, Any], piped: tuple[Any, ...] | None,
                 ) -> tuple[Any, int]:
        args: list[Any] = []
        head = tokens[pos]
        pos += 1
        while pos < len(tokens) and tokens[pos] not in ("|", ")"):
            value, pos = self._operand(tokens, pos, ctx)
            args.append(value)
        if piped is not None:
            args += list(piped)
        if head == "include":
            return self._render(self._define(args[0]), args[1]), pos
        if head in FUNCTIONS:
            return FUNCTIONS[head](*args), pos
        if head == ".Files.Get":
            return ctx["Files"]["Get"](*args), pos
        if head.startswith((".", '"', "(")) or head[0].isdigit():
            if args:
                raise Unsupported(f"{head} takes no arguments")
            value, _ = self._operand([head], 0, ctx)
            return value, pos
        raise Unsupported(f"function {head!r}")

    def _operand(self, tokens: list[str], pos: int, ctx: dict[str, Any]) -> tuple[Any, int]:
        tok = tokens[pos]
        if tok == "(":
            depth, end = 1, pos + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(tokens[end], 0)
                end += 1
            return self._pipeline(" ".join(tokens[pos + 1:end - 1]), ctx), end
        if tok.startswith('"'):
            return json.loads(tok), pos + 1
        if re.fullmatch(r"-?\d+", tok):
            return int(tok), pos + 1
        if tok in ("true", "false"):
            return tok == "true", pos + 1
        if tok == ".":
            return ctx, pos + 1
        if tok.startswith("."):
            value: Any = ctx
            for part in tok[1:].split("."):
                value = value.get(part) if isinstance(value, dict) else None
            return value, pos + 1
        raise Unsupported(f"operand {tok!r}")

    def _define(self, name: str) -> list[Node]:
        if name not in self.defines:
            raise Unsupported(f"include of unknown template {name!r}")
        return self.defines[name]


def _tokens(expr: str) -> list[str]:
    out = []
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            if expr[pos:].strip():
                raise Unsupported(f"cannot tokenize {expr!r}")
            break
        out.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    return out


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return over
