"""One error root for the office; user errors become one line on stderr and exit status 2."""

from __future__ import annotations


class OfficeError(Exception):
    """Anything the office refuses or cannot do, with a message that says what to fix."""


class UserError(OfficeError):
    """A mistake the user can fix (bad URL, missing file, unreachable database): exit 2, one line."""


class DatabaseUnavailableError(UserError):
    """The database cannot be reached or opened."""
