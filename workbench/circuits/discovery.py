"""Circuit discovery: top-n edges of an attribution, the smallest faithful prefix, and ACDC.

- `top_n`: the n highest-|score| edges.
- `greedy_prune`: walks an attribution's ranking and returns the smallest top-k circuit whose exact
  faithfulness reaches ``threshold`` (a batched search over k: every round evaluates ``per_round``
  sizes in one batch and narrows the interval; faithfulness need not be monotone in k, so the
  result is the smallest *evaluated* size that reaches it).
- `acdc` (Conmy et al.): from the full graph, visit receivers from the logits backwards and remove
  every incoming edge whose removal changes the metric by less than ``tau``. Batched variant: the
  edges into one receiver are each tested against the current circuit in one batch, and those
  under ``tau`` are removed together (the paper tests them one at a time, each against the circuit
  left by the previous decisions). ``metric="kl"`` (the paper's) is the KL divergence of the last
  position's distribution from the clean model's, averaged over pairs; ``"logit_diff"`` is the
  change in normalized faithfulness.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from ..core.errors import Cancelled
from .circuit import Circuit
from .edges import DEFAULT_BUDGET, record_outputs, run_masks
from .evaluation import normalize
from .graph import ComputationGraph
from .patching import patch_edges, task_baselines
from .tasking import check_task, pair_metric

__all__ = ["top_n", "greedy_prune", "acdc"]


def top_n(scores: Any, n: int, absolute: bool = True) -> Circuit:
    """The circuit of the ``n`` highest-scoring edges of an `EdgeScores`."""
    return scores.top(n, absolute)


def greedy_prune(model: Any, task: Any, scores: Any, threshold: float = 0.8, *, absolute: bool = True,
                 per_round: int = 8, budget: int = DEFAULT_BUDGET, progress: bool = True,
                 cancel: threading.Event | None = None) -> Circuit:
    """The smallest top-k circuit of ``scores`` whose faithfulness reaches ``threshold`` (see the module docstring).

    ``meta`` of the result holds its faithfulness and the sizes tried.
    """
    check_task(model, task)
    graph = scores.graph
    graph.check_model(model)
    if per_round < 1:
        raise ValueError("per_round must be at least 1")
    m_clean, m_corr, rec = task_baselines(model, task, graph)
    order = scores.order(absolute)
    E = graph.n_edges
    tried: dict[int, float] = {E: 1.0}
    lo, hi = 0, E  # hi reaches the threshold (the full graph does), lo is below it
    while hi - lo > 1:
        if cancel is not None and cancel.is_set():
            raise Cancelled("greedy_prune cancelled", partial=scores.top(hi, absolute))
        ks = sorted({lo + max(1, round((hi - lo) * (i + 1) / (per_round + 1))) for i in range(per_round)} - {hi})
        ks = [k for k in ks if lo < k < hi] or [lo + (hi - lo) // 2]
        masks = torch.ones(len(ks), E, dtype=torch.bool)
        for j, k in enumerate(ks):
            masks[j, order[:k]] = False
        vals = normalize(patch_edges(model, task, masks, graph=graph, source=rec, budget=budget), m_clean, m_corr)
        for k, v in zip(ks, vals.tolist(), strict=True):
            tried[k] = v
        ok = [k for k, v in zip(ks, vals.tolist(), strict=True) if v >= threshold]
        below = [k for k in ks if k not in ok]
        new_hi = min(ok) if ok else hi
        new_lo = max([k for k in below if k < new_hi], default=lo)
        lo, hi = new_lo, new_hi
    c = scores.top(hi, absolute)
    c.meta.update({"method": f"greedy_prune({scores.method})", "threshold": threshold, "faithfulness": tried[hi],
                   "tried": dict(sorted(tried.items()))})
    return c


def _node_receivers(graph: ComputationGraph, nodes: list[str]) -> set[int]:
    """Node indices a node list covers: a head covers its q/k/v inputs and its group's kv inputs."""
    keep = {graph.node("embed"), graph.node("logits")}
    for nm in nodes:
        i = graph.node(nm)
        keep.add(i)
        if graph.node_kind[i] == "head":
            L, h = graph.node_layer[i], graph.node_head[i]
            grp = h // max(1, graph.n_heads // graph.n_kv_heads)
            for j, kind in enumerate(graph.node_kind):
                if graph.node_layer[j] != L:
                    continue
                if kind == "q" and graph.node_head[j] == h:
                    keep.add(j)
                if kind in ("k", "v", "kv") and graph.node_head[j] == (grp if graph.n_kv_heads != graph.n_heads else h):
                    keep.add(j)
    return keep


def acdc(model: Any, task: Any, tau: float, *, nodes: list[str] | None = None, budget: int | None = None,
         metric: str = "kl", split_qkv: bool = False, memory: int = DEFAULT_BUDGET, progress: bool = True,
         cancel: threading.Event | None = None) -> Circuit:
    """ACDC with threshold ``tau`` (see the module docstring).

    ``nodes`` restricts the search to the edges among these nodes (with ``embed`` and ``logits``);
    edges touching other nodes are outside the circuit from the start. ``budget`` caps the number
    of edge tests (each is one patched copy of the pairs); when it runs out, the circuit found so far
    is returned with ``meta["complete"] = False``.
    """
    check_task(model, task)
    if metric not in ("kl", "logit_diff"):
        raise ValueError(f"unknown metric {metric!r}: choose 'kl' or 'logit_diff'")
    tau = float(tau)
    graph = ComputationGraph.from_model(model, split_qkv=split_qkv)
    E = graph.n_edges
    removed = torch.zeros(E, dtype=torch.bool)
    cand = torch.ones(E, dtype=torch.bool)
    if nodes is not None:
        keep = _node_receivers(graph, list(nodes))
        src, dst = graph.edges
        inside = torch.tensor([int(a) in keep and int(b) in keep for a, b in zip(src.tolist(), dst.tolist(), strict=True)])
        removed = ~inside
        cand = inside
    rec, corr_logits = record_outputs(model, graph, task.corrupted_ids)
    _, clean_logits = record_outputs(model, graph, task.clean_ids)
    clean_logp = torch.log_softmax(clean_logits.float().cpu(), -1)
    m_clean = float(task.metric(clean_logits.float()).mean())
    m_corr = float(task.metric(corr_logits.float()).mean())

    def score(masks: torch.Tensor) -> torch.Tensor:
        logits = run_masks(model, graph, task.clean_ids, rec, masks, budget=memory)  # [K, n, V]
        K, n = logits.shape[:2]
        if metric == "kl":
            logp = torch.log_softmax(logits, -1)
            return (clean_logp.exp()[None] * (clean_logp[None] - logp)).sum(-1).mean(1)
        m = pair_metric(task, logits.reshape(K * n, -1)).reshape(K, n).mean(1)
        return normalize(m, m_clean, m_corr)

    current = float(score(removed[None])[0])
    tests = 0
    complete = True
    order = list(range(graph.n_receivers))[::-1]  # logits first, then later layers
    from tqdm.auto import tqdm

    with tqdm(total=len(order), desc="ACDC receivers", disable=not progress, leave=False) as bar:
        for r in order:
            if cancel is not None and cancel.is_set():
                raise Cancelled("ACDC cancelled", partial=Circuit.from_edges(graph, ~removed, method="acdc"))
            incoming = ((graph.edge_receiver == r) & cand & ~removed).nonzero().reshape(-1)
            bar.update(1)
            if incoming.numel() == 0:
                continue
            if budget is not None and tests + incoming.numel() > budget:
                complete = False
                break
            masks = removed[None].repeat(incoming.numel(), 1)
            masks[torch.arange(incoming.numel()), incoming] = True
            vals = score(masks)
            tests += incoming.numel()
            change = vals - current if metric == "kl" else (current - vals).abs()
            drop = incoming[change < tau]
            if drop.numel():
                removed[drop] = True
                current = float(score(removed[None])[0])
    c = Circuit.from_edges(graph, ~removed, method="acdc", tau=tau, metric=metric, tests=tests, complete=complete)
    c.meta["final_metric"] = current
    return c
