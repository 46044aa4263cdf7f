"""The dictionaries' error and warning (their own module, so that every dictionary module can raise them)."""

from __future__ import annotations

from ..core.errors import WorkbenchError

__all__ = ["DictionaryError", "DictionaryWarning"]


class DictionaryError(WorkbenchError, ValueError):
    """A dictionary is missing, corrupt, inconsistent, or does not fit the model or the input."""


class DictionaryWarning(UserWarning):
    """Something about a dictionary looks off but may be fine (e.g. another model's name)."""
