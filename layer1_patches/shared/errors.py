"""The one exception type users see: its message is the whole error line."""

from __future__ import annotations


class CamnetError(Exception):
    """A user-facing error; `str(err)` is one line naming the file, key or value at fault."""


class ConfigError(CamnetError):
    """A config key is unknown, mistyped, out of range or inconsistent with another key."""


def os_reason(err: OSError) -> str:
    """The cause of a failed file operation in a few words ("No space left on device"), for an error line.

    h5py and Keras wrap the system's message in a long multi-line text; the errno says it all.
    """
    import os

    if err.errno:
        return os.strerror(err.errno)
    return first_line(err)


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when empty), cut to `limit` characters: libraries
    put whole tracebacks, or (Keras) a model's whole config, in one message."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if limit is None or len(line) <= limit else line[:limit] + "..."
