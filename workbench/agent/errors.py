"""The agent's errors: `ToolError` (a tool call that cannot run as asked) and `AgentCancelled`."""

from __future__ import annotations

from ..core.errors import Cancelled, WorkbenchError

__all__ = ["AgentCancelled", "ToolError"]


class ToolError(WorkbenchError, ValueError):
    """A tool call that cannot run as asked (the message goes back to the model)."""


class AgentCancelled(Cancelled):
    """An agent run stopped between steps by its ``cancel`` event.

    ``partial`` is the `AgentResult` so far (status ``"cancelled"``); `Agent.resume` continues it.
    """
