"""The config's errors: every problem is a ``ConfigIssue`` that says where and what to do.

Why a list of issues rather than the first error: an operator on a vehicle edits the file
over a slow link; listing every problem at once (``FILE:LINE: key.path: message``) saves a
round trip per mistake.
"""

from __future__ import annotations

from typing import NamedTuple

from edge_agent.errors import UserError


class ConfigIssue(NamedTuple):
    """One problem: where (file and line, or the variable), which key, and what to do."""

    source: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return printable(f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}")


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\n``, ``\\x1b``, ``\\ud800``).

    Why: keys and values of a hostile file end up in messages; a newline would break the one
    problem per line format, an ANSI escape would rewrite the operator's terminal, and a lone
    surrogate cannot even be printed (UnicodeEncodeError).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(UserError):
    """An invalid config; ``str()`` lists every problem as ``FILE:LINE: key.path: message``."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class SecretError(ConfigError):
    """A configured secret (file, systemd credential, variable) that cannot be read."""

    def __init__(self, source: str, message: str):
        super().__init__([ConfigIssue(source, None, "", message)])
