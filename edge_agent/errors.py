"""The one root of every error crackseg raises on purpose.

Why one root: the command-line tools must tell a problem the user can fix (a bad config, a
missing or corrupt model file, an unusable camera source) from a bug. Every deliberate error
derives from ``CracksegError``; those a user can act on derive from ``UserError``, which the
CLIs print as one line (what happened and what to do) and exit with status 2. Anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class CracksegError(Exception):
    """Raised on purpose by crackseg code; the message says what happened and what to do."""


class UserError(CracksegError):
    """A problem the user can fix: printed as one line by the CLIs, exit status 2."""
