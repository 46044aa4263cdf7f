"""The graphs layer's errors."""

from __future__ import annotations

from ..core.errors import WorkbenchError

__all__ = ["GraphError"]


class GraphError(WorkbenchError, ValueError):
    """A graph that cannot be built, read or used as asked (the message says what and why)."""
