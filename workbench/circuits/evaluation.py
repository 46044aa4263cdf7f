"""Faithfulness: how much of the model's behaviour a circuit keeps.

``faithfulness = (m(circuit) - m(corrupted)) / (m(clean) - m(corrupted))`` where ``m`` is the task
metric's mean over pairs and ``m(circuit)`` the clean run with every edge outside the circuit
carrying its corrupted value (exact edge patching): the full graph gives 1, the empty one 0.
A faithfulness curve evaluates the top-k circuits of an attribution for many k, all batched;
its area (``auc``, x = the fraction of edges kept, trapezoids) is MIB's comparison of methods.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import WorkbenchError
from .circuit import Circuit
from .edges import DEFAULT_BUDGET
from .graph import ComputationGraph
from .patching import patch_edges, task_baselines
from .tasking import check_task

__all__ = ["faithfulness", "faithfulness_curve", "FaithfulnessCurve", "CurveSet", "MIB_FRACTIONS", "normalize"]

#: MIB's edge fractions (Mueller et al. 2025): the default sizes of a faithfulness curve.
MIB_FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class NoEffectError(WorkbenchError, ValueError):
    """The clean and corrupted runs give the same metric: faithfulness is undefined."""


def normalize(m: torch.Tensor | float, m_clean: float, m_corr: float) -> Any:
    d = m_clean - m_corr
    if abs(d) < 1e-9:
        raise NoEffectError(f"the clean and corrupted runs give the same mean metric ({m_clean:.6g}): faithfulness is "
                            "undefined; choose a corruption that changes the prediction")
    return (m - m_corr) / d


def _circuit_mask(graph: ComputationGraph, circuit: Any, model: Any) -> torch.Tensor:
    if isinstance(circuit, Circuit):
        circuit.check(model)
    return graph.mask(circuit)


def faithfulness(model: Any, task: Any, circuit: Circuit | Any, *, budget: int = DEFAULT_BUDGET) -> float:
    """The normalized faithfulness of ``circuit`` (a `Circuit`, edge names, indices or a mask) on ``task``."""
    check_task(model, task)
    split = circuit.graph.split_qkv if isinstance(circuit, Circuit) else False
    graph = ComputationGraph.from_model(model, split_qkv=split)
    keep = _circuit_mask(graph, circuit, model)
    m_clean, m_corr, rec = task_baselines(model, task, graph)
    if bool(keep.all()):
        m = torch.tensor(m_clean)
    else:
        m = patch_edges(model, task, (~keep)[None], graph=graph, source=rec, budget=budget)[0]
    return float(normalize(m, m_clean, m_corr))


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top-``sizes[i]`` edges of one attribution (``values``; ``raw``: the mean metric)."""

    method: str
    sizes: list[int]
    values: torch.Tensor
    raw: torch.Tensor
    n_edges: int
    clean_metric: float
    corrupted_metric: float
    task_name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fractions(self) -> torch.Tensor:
        return torch.tensor(self.sizes, dtype=torch.float64) / self.n_edges

    @property
    def auc(self) -> float:
        """Area under faithfulness vs the fraction of edges kept (trapezoids over the evaluated sizes)."""
        x = self.fractions
        y = self.values.double()
        if x.numel() < 2:
            return float("nan")
        return float(torch.trapezoid(y, x))

    def min_edges(self, threshold: float = 0.8) -> int | None:
        """The smallest evaluated size whose faithfulness reaches ``threshold`` (None if none does)."""
        for k, v in zip(self.sizes, self.values.tolist(), strict=True):
            if v >= threshold:
                return int(k)
        return None

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame({"method": self.method, "edges": self.sizes, "fraction": self.fractions.numpy(),
                             "faithfulness": self.values.numpy(), "metric": self.raw.numpy()})

    def plot(self, *others: FaithfulnessCurve, ax: Any = None, log: bool = True) -> Any:
        """Faithfulness against the number of edges kept, with ``others`` beside it."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.2))
        for c in (self, *others):
            x = [max(k, 0.5) for k in c.sizes] if log else c.sizes
            ax.plot(x, c.values.numpy(), marker="o", ms=3, label=f"{c.method} (AUC {c.auc:.3f})")
        if log:
            ax.set_xscale("log")
        ax.axhline(1.0, color="k", lw=0.5, ls=":")
        ax.axhline(0.0, color="k", lw=0.5, ls=":")
        ax.set_xlabel(f"edges kept (of {self.n_edges})")
        ax.set_ylabel("faithfulness")
        ax.set_title(f"faithfulness curve{': ' + self.task_name if self.task_name else ''}", fontsize=9)
        ax.legend(fontsize=8)
        return ax

    def _repr_html_(self) -> str:
        k = self.min_edges(0.8)
        return (f"<b>FaithfulnessCurve</b> {self.method}: {len(self.sizes)} sizes, AUC {self.auc:.3f}, "
                f"0.8 reached at {k if k is not None else 'no evaluated size'} of {self.n_edges} edges")


class CurveSet(list):
    """Several methods' `FaithfulnessCurve` s, side by side (``.auc`` by method, one plot, one table)."""

    @property
    def auc(self) -> dict[str, float]:
        return {c.method: c.auc for c in self}

    def min_edges(self, threshold: float = 0.8) -> dict[str, int | None]:
        return {c.method: c.min_edges(threshold) for c in self}

    def to_pandas(self):
        import pandas as pd

        return pd.concat([c.to_pandas() for c in self], ignore_index=True)

    def plot(self, ax: Any = None, log: bool = True) -> Any:
        return self[0].plot(*self[1:], ax=ax, log=log)


def _sizes(sizes: Sequence[float] | None, n_edges: int) -> list[int]:
    if sizes is None:
        sizes = MIB_FRACTIONS
    out = []
    for v in sizes:
        if isinstance(v, float):  # a fraction of the graph's edges
            if not 0 <= v <= 1:
                raise ValueError(f"a fraction of edges lies in [0, 1], not {v} (give edge counts as ints)")
            k = round(v * n_edges)
        else:
            k = int(v)
        if not 0 <= k <= n_edges:
            raise ValueError(f"a circuit size lies in 0..{n_edges} edges, not {v}")
        out.append(k)
    if not out:
        raise ValueError("no sizes given")
    return sorted(set(out))


def faithfulness_curve(model: Any, task: Any, scores: Any, sizes: Sequence[float] | None = None, *,
                       absolute: bool = True, budget: int = DEFAULT_BUDGET, progress: bool = True,
                       cancel: threading.Event | None = None) -> FaithfulnessCurve | CurveSet:
    """Faithfulness of the top-k edges of ``scores`` (an `EdgeScores`, or a list of them) for each k.

    ``sizes``: edge counts (ints) or fractions of the graph's edges (floats in [0, 1]); default MIB's
    fractions. Every size of every method runs batched (one patched copy of the pairs per size).
    A list of scores gives a `CurveSet` (same sizes, one baseline run).
    """
    check_task(model, task)
    many = isinstance(scores, (list, tuple))
    all_scores = list(scores) if many else [scores]
    if not all_scores:
        raise ValueError("no scores given")
    graph = all_scores[0].graph
    for s in all_scores:
        if s.graph.config != graph.config:
            raise ValueError("every score must come from the same graph (model and split_qkv)")
    graph.check_model(model)
    ks = _sizes(sizes, graph.n_edges)
    m_clean, m_corr, rec = task_baselines(model, task, graph)
    masks = []
    for s in all_scores:
        order = s.order(absolute)
        for k in ks:
            keep = torch.zeros(graph.n_edges, dtype=torch.bool)
            keep[order[:k]] = True
            masks.append(~keep)
    masks_t = torch.stack(masks)
    full = ~masks_t.any(1)  # nothing patched: the clean run itself
    raw = torch.full((len(masks),), m_clean)
    todo = (~full).nonzero().reshape(-1)
    if todo.numel():
        raw[todo] = patch_edges(model, task, masks_t[todo], graph=graph, source=rec, budget=budget,
                                progress=progress, cancel=cancel).float()
    raw = raw.reshape(len(all_scores), len(ks))
    curves = CurveSet(FaithfulnessCurve(s.method, ks, normalize(raw[i], m_clean, m_corr).float(), raw[i],
                                        graph.n_edges, m_clean, m_corr, getattr(task, "name", ""))
                      for i, s in enumerate(all_scores))
    return curves if many else curves[0]
