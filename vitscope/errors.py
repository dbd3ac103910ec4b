"""One exception type for every problem caused by the user's input.

The CLI turns a :class:`VitscopeError` into a one-line message and exit status 2; anything else is
a bug (exit status 1, traceback with ``--debug``).
"""
from __future__ import annotations

import os


class VitscopeError(Exception):
    """Bad input: a file, a flag or a model that vitscope cannot use, with a message for a person."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
