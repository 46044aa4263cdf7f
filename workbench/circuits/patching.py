"""Exact edge patching and path patching (Wang et al.).

`patch_edges` runs the clean prompts with each set's edges carrying their sender's corrupted
output (every other edge carries this run's own value) and returns the task metric's mean over
pairs, one number per set. Many sets share a forward: the batch holds one copy of the pairs per
set, chunked so that the per-sender difference buffer fits ``budget`` bytes. Sets that patch only
edges into the logits need no forward (the logits' input is the clean stream plus the edges'
differences), and a batch of sets whose receivers all sit at layer L or above skips layers < L,
starting from the clean run's stream (`workbench.circuits.edges.run_masks`).

`path_patching` is exact patching of single edges from sender heads to receivers (heads' q/k/v
inputs, heads, MLPs or the logits): the classic sender x receiver matrix.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.viewers import Showable
from .edges import DEFAULT_BUDGET, record_outputs, run_masks
from .graph import ComputationGraph, EdgeNameError
from .tasking import check_task, pair_metric

__all__ = ["patch_edges", "path_patching", "PathPatchingResult", "task_baselines"]


def task_baselines(model: Any, task: Any, graph: ComputationGraph) -> tuple[float, float, torch.Tensor]:
    """(clean mean metric, corrupted mean metric, the corrupted run's sender outputs)."""
    rec, corr_logits = record_outputs(model, graph, task.corrupted_ids)
    _, clean_logits = record_outputs(model, graph, task.clean_ids[:, :])
    return float(task.metric(clean_logits.float()).mean()), float(task.metric(corr_logits.float()).mean()), rec


def _masks(graph: ComputationGraph, edge_sets: Sequence[Any] | torch.Tensor) -> torch.Tensor:
    if isinstance(edge_sets, torch.Tensor) and edge_sets.dtype == torch.bool and edge_sets.dim() == 2:
        if edge_sets.shape[1] != graph.n_edges:
            raise ValueError(f"edge masks have shape [sets, n_edges] = [*, {graph.n_edges}], not {list(edge_sets.shape)}")
        return edge_sets
    if isinstance(edge_sets, (str, tuple)) or hasattr(edge_sets, "graph_config"):
        raise TypeError("edge_sets is a list of edge sets (each a list of edge names, indices, a mask or a Circuit): "
                        "wrap a single set in a list")
    sets = list(edge_sets)
    if not sets:
        raise ValueError("no edge sets given")
    return torch.stack([graph.mask(s) for s in sets])


def patch_edges(model: Any, task: Any, edge_sets: Sequence[Any] | torch.Tensor, *, graph: ComputationGraph | None = None,
                split_qkv: bool = False, per_pair: bool = False, source: torch.Tensor | None = None,
                budget: int = DEFAULT_BUDGET, progress: bool = False,
                cancel: threading.Event | None = None) -> torch.Tensor:
    """The task metric's mean over pairs ``[len(edge_sets)]`` with each set's edges patched.

    A set is a list of edge names (``"a0.h3->m2"``) or indices, a bool mask ``[n_edges]`` or a
    `Circuit`; ``edge_sets`` may also be a bool tensor ``[sets, n_edges]``. ``per_pair=True`` returns
    ``[sets, n]``. ``source`` replaces the corrupted run's sender outputs (``[n_senders, n, s, d]``,
    or ``[n_senders, 1, 1, d]`` for means). Cancelling raises `workbench.Cancelled`.
    """
    check_task(model, task)
    graph = graph or ComputationGraph.from_model(model, split_qkv=split_qkv)
    graph.check_model(model)
    masks = _masks(graph, edge_sets)
    if source is None:
        source, _ = record_outputs(model, graph, task.corrupted_ids)
    logits = run_masks(model, graph, task.clean_ids, source, masks, budget=budget, progress=progress, cancel=cancel)
    K, n = logits.shape[:2]
    m = pair_metric(task, logits.reshape(K * n, -1)).reshape(K, n)
    return m if per_pair else m.mean(1)


@dataclass
class PathPatchingResult(Showable):
    """``values[i, j]``: the task metric (mean over pairs) with the single edge ``senders[i] -> receivers[j]``
    patched; ``normalized`` is ``(values - corrupted) / (clean - corrupted)`` (1: no effect);
    NaN where no such edge exists (a receiver at or before the sender's layer)."""

    senders: list[str]
    receivers: list[str]
    values: torch.Tensor
    clean_metric: float
    corrupted_metric: float
    graph: ComputationGraph = field(repr=False)
    task: Any = field(default=None, repr=False)

    @property
    def change(self) -> torch.Tensor:
        """``values - clean_metric``: the metric's change from the clean run."""
        return self.values - self.clean_metric

    @property
    def normalized(self) -> torch.Tensor:
        d = self.clean_metric - self.corrupted_metric
        return (self.values - self.corrupted_metric) / d if abs(d) > 1e-12 else torch.full_like(self.values, float("nan"))

    def to_pandas(self):
        """The change matrix: rows senders, columns receivers."""
        import pandas as pd

        return pd.DataFrame(self.change.numpy(), index=pd.Index(self.senders, name="sender"),
                            columns=pd.Index(self.receivers, name="receiver"))

    def plot(self, ax: Any = None) -> Any:
        """A heatmap of the metric's change (diverging, centred on 0)."""
        import matplotlib.pyplot as plt

        v = self.change.numpy()
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4, 0.4 * len(self.receivers) + 2), max(3, 0.3 * len(self.senders) + 1.5)))
        finite = v[v == v]
        lim = float(abs(finite).max()) if finite.size else 1.0
        im = ax.imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(self.receivers)))
        ax.set_xticklabels(self.receivers, rotation=90, fontsize=7)
        ax.set_yticks(range(len(self.senders)))
        ax.set_yticklabels(self.senders, fontsize=7)
        ax.set_xlabel("receiver")
        ax.set_ylabel("sender")
        ax.set_title("path patching: metric change", fontsize=9)
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        return ax

    def _repr_html_(self) -> str:
        c = self.change
        fin = c[c == c]
        big = float(fin.abs().max()) if fin.numel() else float("nan")
        return (f"<b>PathPatchingResult</b> {len(self.senders)} senders × {len(self.receivers)} receivers; clean "
                f"{self.clean_metric:.4g}, corrupted {self.corrupted_metric:.4g}; largest change {big:.4g}")


def _expand(graph: ComputationGraph, names: Any, what: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    out = []
    for nm in names:
        if isinstance(nm, tuple):  # (layer, head)
            nm = f"a{int(nm[0])}.h{int(nm[1])}"
        graph.node(nm)
        out.append(nm)
    if not out:
        raise ValueError(f"no {what} given")
    return out


def path_patching(model: Any, task: Any, senders: Any, receivers: Any, *, split_qkv: bool | None = None,
                  budget: int = DEFAULT_BUDGET, progress: bool = True,
                  cancel: threading.Event | None = None) -> PathPatchingResult:
    """Path patching from ``senders`` (node names such as ``"a9.h6"`` or ``(layer, head)``) to
    ``receivers`` (``"a10.h7.q"``, ``"a10.kv2.k"``, ``"a10.h7"``, ``"m11"`` or ``"logits"``).

    The graph splits q/k/v when a receiver names one (or ``split_qkv=True``). All single edges run
    batched. Returns `PathPatchingResult`.
    """
    check_task(model, task)
    rl = [receivers] if isinstance(receivers, str) else list(receivers)
    if split_qkv is None:
        split_qkv = any(isinstance(r, str) and r.rsplit(".", 1)[-1] in ("q", "k", "v") for r in rl)
    graph = ComputationGraph.from_model(model, split_qkv=split_qkv)
    S = _expand(graph, senders, "senders")
    R = _expand(graph, rl, "receivers")
    for s in S:
        if graph.node(s) not in set(graph.senders):
            raise EdgeNameError(f"sender {s!r} has no output: senders are 'embed', heads and MLPs")
    for r in R:
        if graph.node(r) not in set(graph.receivers):
            raise EdgeNameError(f"receiver {r!r} has no input of its own" +
                                (": name its q, k or v input" if split_qkv else ""))
    pairs, where = [], []
    for i, s in enumerate(S):
        for j, r in enumerate(R):
            e = graph.edge_index.get(f"{s}->{r}")
            if e is not None:
                pairs.append(e)
                where.append((i, j))
    m_clean, m_corr, rec = task_baselines(model, task, graph)
    values = torch.full((len(S), len(R)), float("nan"))
    if pairs:
        masks = torch.zeros(len(pairs), graph.n_edges, dtype=torch.bool)
        masks[torch.arange(len(pairs)), torch.tensor(pairs)] = True
        out = patch_edges(model, task, masks, graph=graph, source=rec, budget=budget, progress=progress, cancel=cancel)
        for (i, j), v in zip(where, out.tolist(), strict=True):
            values[i, j] = v
    return PathPatchingResult(S, R, values, m_clean, m_corr, graph, task)
