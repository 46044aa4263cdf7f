"""Influence, pruning and graph scores of an attribution graph, as circuit-tracer defines them.

The adjacency ``A [n, n]`` holds direct effects, rows targets and columns sources. Influence
normalizes ``|A|`` by rows and sums its powers from the logits back, weighted by the logits'
probabilities (``w @ (B + B^2 + ...)``, B the normalized matrix). Pruning keeps the nodes up to
``node_threshold`` of cumulative influence and then the edges up to ``edge_threshold`` of
cumulative edge influence, always keeps tokens and logits, and repeatedly drops feature and
error nodes left with no outgoing edge and feature nodes left with no incoming one.
The replacement score is the fraction of the tokens' and errors' influence that the tokens
carry; the completeness score is the influence-weighted fraction of each node's normalized input
that comes from non-error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["normalize_rows", "influence", "node_influence", "edge_influence", "threshold_for", "prune_masks",
           "graph_scores", "GraphScores", "PruneMasks"]


def normalize_rows(a: torch.Tensor) -> torch.Tensor:
    """``|a|`` with each row divided by its sum (rows summing to zero stay zero)."""
    m = a.abs()
    return m / m.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(b: torch.Tensor, weights: torch.Tensor, max_iter: int | None = None) -> torch.Tensor:
    """``weights @ (b + b^2 + ...)`` for a nilpotent ``b`` (a DAG's matrix): summed until a power vanishes."""
    limit = max_iter if max_iter is not None else b.shape[0] + 1
    cur = weights @ b
    total = cur.clone()
    for _ in range(limit):
        if not bool(cur.any()):
            return total
        cur = cur @ b
        total += cur
    raise RuntimeError(f"influence did not converge in {limit} steps: the adjacency has a cycle")


def node_influence(adjacency: torch.Tensor, logit_weights: torch.Tensor) -> torch.Tensor:
    """Each node's influence on the logits through the row-normalized graph ``[n]``."""
    return influence(normalize_rows(adjacency), logit_weights)


def edge_influence(adjacency: torch.Tensor, logit_weights: torch.Tensor) -> torch.Tensor:
    """Each edge's influence ``[n, n]``: its normalized weight times its target's influence (logits included)."""
    b = normalize_rows(adjacency)
    target = influence(b, logit_weights) + logit_weights
    return b * target[:, None]


def threshold_for(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The smallest score kept when the largest scores are kept up to ``fraction`` of their total."""
    s = torch.sort(scores.reshape(-1), descending=True).values
    cum = torch.cumsum(s, dim=0) / s.sum().clamp(min=1e-30)
    i = int(torch.searchsorted(cum, torch.tensor(float(fraction), dtype=cum.dtype)))
    return s[min(i, s.numel() - 1)]


@dataclass
class PruneMasks:
    """What pruning keeps: ``nodes [n]`` and ``edges [n, n]`` (bool), and each node's influence and
    cumulative influence rank (``cumulative``: the fraction of total influence up to and including it)."""

    nodes: torch.Tensor
    edges: torch.Tensor
    influence: torch.Tensor
    cumulative: torch.Tensor


def _check_fraction(name: str, v: float) -> float:
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, not {v}")
    return v


def prune_masks(adjacency: torch.Tensor, logit_weights: torch.Tensor, n_features: int, n_tokens: int,
                n_logits: int, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneMasks:
    """circuit-tracer's pruning of a graph whose nodes are ordered features, errors, tokens, logits."""
    node_threshold = _check_fraction("node_threshold", node_threshold)
    edge_threshold = _check_fraction("edge_threshold", edge_threshold)
    a = adjacency.float()
    w = logit_weights.float()
    inf = node_influence(a, w)
    keep = inf >= threshold_for(inf, node_threshold)
    fixed = n_tokens + n_logits  # tokens and logits are always kept
    keep[a.shape[0] - fixed:] = True
    pruned = a.clone()
    pruned[~keep] = 0
    pruned[:, ~keep] = 0
    e_scores = edge_influence(pruned, w)
    nz = e_scores[e_scores != 0]  # zero scores add nothing to the cumulative sum (and zero edges are dropped)
    edges = (e_scores >= threshold_for(nz, edge_threshold)) if nz.numel() else torch.zeros_like(pruned, dtype=torch.bool)
    edges &= pruned != 0
    inner = a.shape[0] - fixed
    while True:
        before = keep.clone()
        edges[~keep] = False
        edges[:, ~keep] = False
        keep[:inner] &= edges[:, :inner].any(0)  # features and errors need an outgoing edge
        keep[:n_features] &= edges[:n_features].any(1)  # features need an incoming edge
        if torch.equal(keep, before):
            break
    order = torch.argsort(inf, descending=True)
    cum = torch.cumsum(inf[order], 0) / inf.sum().clamp(min=1e-30)
    cumulative = torch.zeros_like(inf)
    cumulative[order] = cum
    return PruneMasks(keep, edges, inf, cumulative)


@dataclass(frozen=True)
class GraphScores:
    """circuit-tracer's replacement and completeness scores of a graph (1.0: no error influence)."""

    replacement: float
    completeness: float

    def __repr__(self) -> str:
        return f"GraphScores(replacement={self.replacement:.3f}, completeness={self.completeness:.3f})"


def graph_scores(adjacency: torch.Tensor, logit_weights: torch.Tensor, n_features: int, n_errors: int,
                 n_tokens: int) -> GraphScores:
    """The replacement and completeness scores (nodes ordered features, errors, tokens, logits)."""
    a = adjacency.float()
    w = logit_weights.float()
    b = normalize_rows(a)
    inf = influence(b, w)
    e0, e1 = n_features, n_features + n_errors
    tok = inf[e1:e1 + n_tokens].sum()
    err = inf[e0:e1].sum()
    replacement = float(tok / (tok + err)) if float(tok + err) > 0 else 0.0
    non_error = 1 - b[:, e0:e1].sum(dim=1)
    out = inf + w
    completeness = float((non_error * out).sum() / out.sum()) if float(out.sum()) > 0 else 0.0
    return GraphScores(replacement, completeness)
