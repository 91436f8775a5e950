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
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
