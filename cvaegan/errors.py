"""The project's error classes: every error cvaegan raises on purpose derives from CVAEGANError.

The command line prints these as one line (`error: ...`) and shows a traceback for anything else,
which is a bug. Each message says what was wrong and how to fix it.
"""

from __future__ import annotations


class CVAEGANError(Exception):
    """Base class of the errors cvaegan raises on purpose."""


class InputError(CVAEGANError, ValueError):
    """An argument, file or value given by the user that cannot be used as it is."""
