"""The one exception type users see: its message is the whole error line."""

from __future__ import annotations


class CamnetError(Exception):
    """A user-facing error; `str(err)` is one line naming the file, key or value at fault."""


class ConfigError(CamnetError):
    """A config key is unknown, mistyped, out of range or inconsistent with another key."""
