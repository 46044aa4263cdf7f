"""Edge attribution patching: EAP (Syed et al.) and EAP-IG (Hanna et al., "Have Faith in Faithfulness").

The score of edge u->v estimates how the metric changes when that edge alone carries the
corrupted value: ``(corrupted_u - clean_u) . d metric / d input_v``, summed over positions and
averaged over the task's pairs. EAP takes the gradient on the clean run (one corrupted forward,
one clean forward with its backward). EAP-IG averages it over ``steps`` runs whose input
embeddings lie on the straight path from the corrupted to the clean ones (``alpha = k / steps``,
k = 0 .. steps-1, Hanna et al.'s default), all steps batched into one forward and backward (rows
chunked to ``budget``). The metric is the task's (``Task.metric``, per pair, at the last position).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import Cancelled
from ..core.viewers import Showable
from .circuit import Circuit
from .edges import DEFAULT_BUDGET, gradient_run, record_outputs
from .graph import ComputationGraph
from .tasking import check_task, pair_metric

__all__ = ["EdgeScores", "eap", "METHODS"]

METHODS = ("eap", "eap-ig")


@dataclass
class EdgeScores(Showable):
    """Per-edge scores ``[n_edges]`` of one method on one task (``graph.edge_names[i]`` is edge i).

    ``clean_metric`` / ``corrupted_metric`` are the task metric's means on the two runs.
    """

    graph: ComputationGraph
    scores: torch.Tensor
    method: str
    task: Any = field(default=None, repr=False)
    clean_metric: float = float("nan")
    corrupted_metric: float = float("nan")
    model_name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False, compare=False)

    def node_scores(self, absolute: bool = False) -> dict[str, float]:
        """Each node's score: the sum of its outgoing edges' scores (senders) or, for receiver-only
        nodes (``logits``, q/k/v and kv inputs), of its incoming ones. ``absolute`` sums |scores|."""
        s = self.scores.abs() if absolute else self.scores
        g = self.graph
        out = torch.zeros(g.n_nodes, dtype=s.dtype)
        src, dst = g.edges
        out.index_add_(0, src, s)
        recv_only = torch.zeros(g.n_nodes, dtype=torch.bool)
        recv_only[g.receivers] = True
        recv_only[g.senders] = False
        inc = torch.zeros(g.n_nodes, dtype=s.dtype).index_add_(0, dst, s)
        out = torch.where(recv_only, inc, out)
        return dict(zip(g.nodes, out.tolist(), strict=True))

    def order(self, absolute: bool = True) -> torch.Tensor:
        """Edge indices from the highest score to the lowest (by |score| unless ``absolute=False``)."""
        s = self.scores.abs() if absolute else self.scores
        return torch.argsort(s, descending=True, stable=True)

    def top(self, n: int, absolute: bool = True) -> Circuit:
        """The circuit of the ``n`` highest-scoring edges."""
        if not 0 <= int(n) <= self.graph.n_edges:
            raise ValueError(f"n must be between 0 and the graph's {self.graph.n_edges} edges, not {n}")
        ids = self.order(absolute)[: int(n)]
        return Circuit.from_edges(self.graph, ids, method=self.method, size=int(n),
                                  task=getattr(self.task, "name", ""))

    def to_pandas(self):
        """One row per edge: name, source, destination, score, sorted by |score|."""
        import pandas as pd

        g = self.graph
        src, dst = g.edges
        df = pd.DataFrame({"edge": g.edge_names, "src": [g.nodes[i] for i in src.tolist()],
                           "dst": [g.nodes[i] for i in dst.tolist()], "score": self.scores.tolist()})
        return df.reindex(df["score"].abs().sort_values(ascending=False).index).reset_index(drop=True)

    def plot(self, ax: Any = None, n: int = 30) -> Any:
        """A bar chart of the ``n`` edges with the largest |score|."""
        import matplotlib.pyplot as plt

        df = self.to_pandas().head(n)
        if ax is None:
            _, ax = plt.subplots(figsize=(6, max(2.5, 0.22 * len(df) + 1)))
        colors = ["#cc6677" if v < 0 else "#4477aa" for v in df["score"]]
        ax.barh(range(len(df))[::-1], df["score"], color=colors)
        ax.set_yticks(range(len(df))[::-1])
        ax.set_yticklabels(df["edge"], fontsize=7)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel("score (metric change if the edge is corrupted)")
        ax.set_title(f"{self.method} on {getattr(self.task, 'name', 'task')}: top {len(df)} of {self.graph.n_edges} edges",
                     fontsize=9)
        return ax

    def _repr_html_(self) -> str:
        top = self.to_pandas().head(5)
        rows = ", ".join(f"{e} {v:+.3g}" for e, v in zip(top["edge"], top["score"], strict=True))
        return (f"<b>EdgeScores</b> {self.method}, {self.graph.n_edges} edges of {self.model_name}; "
                f"clean {self.clean_metric:.4g}, corrupted {self.corrupted_metric:.4g}; top: {rows}")


def _scores_from(graph: ComputationGraph, diff: torch.Tensor, grads: list[tuple[list[int], torch.Tensor]],
                 steps: int) -> torch.Tensor:
    """Edge scores from ``diff [S, n, s, d]`` (corrupted - clean) and receiver gradients ``[steps*n, s, P, d]``.

    Every receiver's gradient is one row of a ``[R, n * s * d]`` matrix (copied in runs of ``d``
    floats), and the products are a few GEMMs against ``diff``: receivers in blocks by how many
    senders lie upstream, each block reading only the senders its receivers can hear."""
    S, n = diff.shape[0], diff.shape[1]
    flat = diff.float().reshape(S, -1)  # [S, n * s * d]
    K = flat.shape[1]
    GT = torch.zeros(graph.n_receivers, K)
    for recv, gr in grads:
        g = gr.float()
        if steps > 1:
            g = g.reshape(steps, n, *gr.shape[1:]).sum(0)  # [n, s, P, d]
        gp = g.permute(2, 0, 1, 3)  # [P, n, s, d]: each receiver's row ordered as flat's columns
        run = _as_slice(recv)
        if run is not None:
            GT[run].view(gp.shape).add_(gp)
        else:
            GT.index_add_(0, torch.tensor(recv), gp.reshape(len(recv), K))
    # how many senders (from the first) each receiver's edges reach back to
    up = torch.zeros(graph.n_receivers, dtype=torch.long).scatter_reduce_(
        0, graph.edge_receiver, graph.edge_sender + 1, "amax")
    order = torch.argsort(up, stable=True)
    mat = torch.zeros(graph.n_receivers, S)  # [receiver, sender]
    for cols in order.tensor_split(_SCORE_BLOCKS):
        if cols.numel():
            u = int(up[cols].max())
            run = _as_slice(cols.tolist())
            mat[cols, :u] = (GT[run] if run is not None else GT[cols]) @ flat[:u].T
    return (mat[graph.edge_receiver, graph.edge_sender].double() / (n * steps)).float()


_SCORE_BLOCKS = 6


def _as_slice(idx: list[int]) -> slice | None:
    """``idx`` as a slice when it is a run of consecutive integers (a view instead of a copy)."""
    return slice(idx[0], idx[0] + len(idx)) if idx == list(range(idx[0], idx[0] + len(idx))) else None


def eap(model: Any, task: Any, method: str = "eap", steps: int = 5, *, split_qkv: bool = False,
        graph: ComputationGraph | None = None, budget: int = DEFAULT_BUDGET, progress: bool = True,
        cancel: threading.Event | None = None) -> EdgeScores:
    """Edge attribution scores of ``task`` on ``model`` (see the module docstring).

    ``method``: ``"eap"`` or ``"eap-ig"`` (``steps`` integration steps, batched; rows are chunked so
    that a chunk's activations fit ``budget`` bytes). ``graph`` defaults to the model's
    (``split_qkv`` picks q/k/v receivers). Returns `EdgeScores`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose 'eap' or 'eap-ig'")
    steps = int(steps)
    if method == "eap-ig" and steps < 1:
        raise ValueError(f"EAP-IG needs at least one step, not {steps}")
    check_task(model, task)
    graph = graph or ComputationGraph.from_model(model, split_qkv=split_qkv)
    graph.check_model(model)
    clean, corr = task.clean_ids, task.corrupted_ids
    n, s = clean.shape
    corr_rec, corr_logits = record_outputs(model, graph, corr)
    m_corr = float(task.metric(corr_logits.float()).mean())
    if method == "eap":
        m, grads, clean_rec = gradient_run(model, graph, clean, task.metric, record=True)
        with torch.inference_mode():  # in place (the recording is an inference tensor): [senders, n, s, d]
            diff = corr_rec.sub_(clean_rec).cpu()
        del clean_rec
        scores = _scores_from(graph, diff, [(r, g.cpu()) for r, g in grads], 1)
        m_clean = float(m.mean())
    else:
        clean_rec, clean_logits = record_outputs(model, graph, clean)
        m_clean = float(task.metric(clean_logits.float()).mean())
        src0 = corr_rec[:1].clone()  # the corrupted embeddings: the path's start
        with torch.inference_mode():
            diff = corr_rec.sub_(clean_rec).cpu()
        del clean_rec
        alphas = torch.arange(steps, dtype=torch.float32) / steps
        per_step = graph.n_receivers * n * s * model.d_model * 4 * 3 + graph.n_senders * n * s * model.d_model * 4
        chunk = max(1, min(steps, budget // max(1, per_step)))
        total = torch.zeros(graph.n_edges)
        from tqdm.auto import tqdm

        with tqdm(total=steps, desc="EAP-IG steps", disable=not progress, leave=False) as bar:
            for start in range(0, steps, chunk):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"EAP-IG cancelled after {start} of {steps} steps")
                a = alphas[start:start + chunk]
                k = a.numel()
                ids = clean.repeat(k, 1)
                _, grads, _ = gradient_run(model, graph, ids, lambda lg: pair_metric(task, lg.float()),
                                           alpha=a.repeat_interleave(n).to(model.device),
                                           source=src0.to(model.device))
                total += _scores_from(graph, diff, [(r, g.cpu()) for r, g in grads], k) * k
                bar.update(k)
        scores = total / steps
    return EdgeScores(graph, scores, method, task, m_clean, m_corr, model.name,
                      {"steps": steps if method == "eap-ig" else 1}, model)
