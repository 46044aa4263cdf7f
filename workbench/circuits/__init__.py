"""Circuits between components: tasks, the computation graph, edge attribution (EAP, EAP-IG),
exact edge and path patching, circuit discovery (top-n, greedy, ACDC), faithfulness, head scores.

May import `workbench.core`, `workbench.causal` and `workbench.neurons`. Names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module (under ``workbench.circuits.``) that defines it
_EXPORTS: dict[str, str] = {
    # tasks (tasks.py)
    "Task": "tasks",
    # the rest is added as the modules land
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'workbench.circuits' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
