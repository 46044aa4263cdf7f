"""The workbench's error contract: one root exception and one cancellation convention.

Every error the workbench raises on purpose derives from `WorkbenchError`. Where a standard
base tells the caller more, the class keeps it too (``DictionaryError(WorkbenchError, ValueError)``),
so ``except ValueError`` still works.

**Cancellation.** Long work (generation, scans, SAE training, the agent, widget requests)
takes ``cancel=``, a `threading.Event`. When it is set, the work stops at the next safe point
(a token, a batch, a step), saves what it has (a checkpoint, when the work has one) and
raises `Cancelled`, or a subclass that names the work. ``Cancelled.partial`` holds the partial
result when there is one (the scan's store, the agent's steps so far); calling the same
function again with the same arguments resumes from the checkpoint. Ctrl-C
(`KeyboardInterrupt`) is handled the same way where work checkpoints, and is re-raised.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WorkbenchError", "Cancelled"]


class WorkbenchError(Exception):
    """The root of every error the workbench raises on purpose."""


class Cancelled(WorkbenchError):
    """Work stopped because its ``cancel`` event was set; ``partial`` is what it had done, if anything."""

    def __init__(self, message: str = "cancelled", partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial
