"""The error every chat back end raises: `LLMError`."""

from __future__ import annotations

from ..core.errors import WorkbenchError

__all__ = ["LLMError"]


class LLMError(WorkbenchError, RuntimeError):
    """A chat request failed: unreachable endpoint, HTTP error, bad reply, or an unparsable answer.

    ``url`` (never with credentials), ``status`` (HTTP status or None) and ``raw`` (the last raw
    reply text, where there was one) say more.
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None,
                 raw: str | None = None):
        super().__init__(message)
        self.url = url
        self.status = status
        self.raw = raw

