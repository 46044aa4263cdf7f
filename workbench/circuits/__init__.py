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
    "TaskError": "tasks", "TaskReport": "tasks", "make_task": "tasks", "task_from_template": "tasks",
    "evaluate_task": "tasks", "single_token": "tasks",
    # the shipped task generators (task_generators.py)
    "ioi_task": "task_generators", "induction_task": "task_generators", "factual_task": "task_generators",
    "greater_than_task": "task_generators", "arithmetic_task": "task_generators",
    # head scores (heads.py)
    "HeadScores": "heads", "head_scores": "heads", "HEAD_SCORE_KINDS": "heads", "repeated_sequences": "heads",
    # the computation graph and edge-level methods (engine)
    "ComputationGraph": "graph", "GraphError": "graph", "EdgeNameError": "graph",
    "EdgeScores": "attribution", "eap": "attribution",
    "patch_edges": "patching", "path_patching": "patching", "PathPatchingResult": "patching",
    "Circuit": "circuit", "CircuitSpec": "circuit", "CircuitModelError": "circuit",
    "faithfulness": "evaluation", "faithfulness_curve": "evaluation", "FaithfulnessCurve": "evaluation",
    "CurveSet": "evaluation",
    "top_n": "discovery", "greedy_prune": "discovery", "acdc": "discovery",
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
