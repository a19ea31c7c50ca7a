"""The one exception type for mistakes the user can fix (bad input, bad config)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or configuration.

    The command line prints ``error: <message>`` on one line and exits non-zero, with no
    traceback unless ``--debug`` is given. Messages name the file, line and reason where
    there is one.
    """


def located(path: object, line: int | None, reason: str) -> UserError:
    """A UserError naming ``path:line: reason`` (``path: reason`` without a line)."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return UserError(f"{where}: {reason}")
