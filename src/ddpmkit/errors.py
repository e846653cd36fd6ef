"""The one exception type users see: its message is a single line naming what is wrong."""

from __future__ import annotations


class DdpmkitError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with status 2."""
