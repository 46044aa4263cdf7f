"""Result objects open their widget with ``.show()`` without the engine importing widgets.

Widget packages register a viewer per result type with `register_viewer`; installed
packages are discovered through the ``workbench.core.viewers`` entry-point group (this project's
own `widgets` package registers itself there).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

_VIEWERS: dict[type, Callable[..., Any]] = {}
_LOADED = False


def register_viewer(result_type: type, viewer: Callable[..., Any]) -> None:
    """Make ``result.show(*a, **kw)`` call ``viewer(result, *a, **kw)`` for results of this type."""
    _VIEWERS[result_type] = viewer


def _load_plugins() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for ep in entry_points(group="workbench.core.viewers"):
        ep.load()()


def viewer_for(result: Any) -> Callable[..., Any]:
    """The registered viewer of a result (searching its class hierarchy)."""
    for attempt in range(2):
        for cls in type(result).__mro__:
            if cls in _VIEWERS:
                return _VIEWERS[cls]
        if attempt == 0:
            _load_plugins()
    raise LookupError(f"no widget is registered for {type(result).__name__}: install the `widgets` package "
                      "(pip install interp-workbench) or `import widgets` first")


class Showable:
    """Mixin: ``.show()`` opens the widget registered for this result type."""

    def show(self, *args: Any, **kwargs: Any) -> Any:
        return viewer_for(self)(self, *args, **kwargs)
