"""Result objects open their widget with ``.show()`` without the engine importing widgets.

Widget packages register a viewer per result type with `register_viewer`; installed
packages are discovered through the ``workbench.viewers`` entry-point group (this project's
own `workbench.widgets` package registers itself there).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from .errors import WorkbenchError

__all__ = ["Showable", "register_viewer", "viewer_for", "registered_viewers", "NoViewerError"]

_VIEWERS: dict[type, Callable[..., Any]] = {}
_LOADED = False


def register_viewer(result_type: type, viewer: Callable[..., Any]) -> None:
    """Make ``result.show(*a, **kw)`` call ``viewer(result, *a, **kw)`` for results of this type."""
    _VIEWERS[result_type] = viewer


class NoViewerError(WorkbenchError, LookupError):
    """No viewer is registered for a result type."""


def registered_viewers() -> dict[type, Callable[..., Any]]:
    """Result type -> viewer, after loading the ``workbench.viewers`` entry points."""
    _load_plugins()
    return dict(_VIEWERS)


def _load_plugins() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for ep in entry_points(group="workbench.viewers"):
        ep.load()()


def viewer_for(result: Any) -> Callable[..., Any]:
    """The registered viewer of a result (searching its class hierarchy)."""
    for attempt in range(2):
        for cls in type(result).__mro__:
            if cls in _VIEWERS:
                return _VIEWERS[cls]
        if attempt == 0:
            _load_plugins()
    raise NoViewerError(f"no viewer is registered for {type(result).__name__}; the built-in ones come from "
                        "`workbench.widgets` (its entry point did not load: try `import workbench.widgets`)")


class Showable:
    """Mixin: ``.show()`` opens the widget registered for this result type.

    Only results that have a registered viewer derive from it (a test checks every subclass).
    """

    def show(self, *args: Any, **kwargs: Any) -> Any:
        return viewer_for(self)(self, *args, **kwargs)
