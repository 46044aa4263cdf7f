"""Supernode proposals: feature nodes grouped by what they write, where they fire and what they feed.

Three similarities between two feature nodes, each a cosine in [-1, 1] (negatives count as 0):
their decoder directions (what they write into the residual stream; needs the transcoder set),
their activation profiles across the prompt's positions (the same latent's activation at every
position where it is active in the graph), and their outgoing edge rows in the graph (which
nodes they feed, so imported graphs work too). The mean of the available ones is clustered by
average linkage; clusters of two or more whose mean similarity reaches ``threshold`` become
proposals ``[label, id, ...]``, labelled by layer span and the token they mostly sit on.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import torch

from .errors import GraphError

if TYPE_CHECKING:
    from .graph import AttributionGraph

__all__ = ["propose_supernodes", "feature_similarity"]


def _cos(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    n = x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    y = x / n
    return (y @ y.T).clamp(min=0)


def feature_similarity(graph: AttributionGraph, idx: list[int]) -> torch.Tensor:
    """``[k, k]`` similarity of feature nodes ``idx`` (mean of the available cosines, see the module)."""
    feats = graph.features[idx]
    parts = []
    tset = graph.transcoders
    if tset is not None:
        rows = []
        for L, _, f in feats.tolist():
            w = tset.decoder_rows(L)[f]
            rows.append(w.reshape(-1, w.shape[-1]).sum(0).float() if w.dim() > 1 else w.float())
        parts.append(_cos(torch.stack(rows)))
    prof = torch.zeros(len(idx), graph.n_pos, dtype=torch.float64)
    key_pos: dict[tuple[int, int], dict[int, float]] = {}
    for (L, p, f), a in zip(graph.features.tolist(), graph.activations.tolist(), strict=True):
        key_pos.setdefault((L, f), {})[p] = a
    for r, (L, _, f) in enumerate(feats.tolist()):
        for p, a in key_pos[(L, f)].items():
            prof[r, p] = a
    parts.append(_cos(prof))
    out_rows = graph.adjacency[:, idx].T  # what each feeds
    if bool(out_rows.any()):
        parts.append(_cos(out_rows.abs()))
    return torch.stack(parts).mean(0)


def propose_supernodes(graph: AttributionGraph, nodes: list[str] | None = None, threshold: float = 0.6,
                       min_size: int = 2) -> list[list[str]]:
    """Proposed supernodes ``[[label, id, ...], ...]`` among ``nodes`` (default: the feature nodes kept
    by the default pruning), largest first."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise GraphError(f"threshold must be between 0 and 1, not {threshold}")
    if nodes is None:
        keep = graph.prune().masks.nodes
        idx = [i for i in keep.nonzero().flatten().tolist() if graph.kind(i) == "feature"]
    else:
        idx = [graph.index(n) for n in nodes]
        bad = [graph.node_ids[i] for i in idx if graph.kind(i) != "feature"]
        if bad:
            raise GraphError(f"supernodes group feature nodes; these are not features: {bad[:5]}")
    if len(idx) < 2:
        return []
    sim = feature_similarity(graph, idx).clone()
    k = len(idx)
    sim.fill_diagonal_(-1.0)
    size = torch.ones(k, dtype=torch.float64)
    alive = torch.ones(k, dtype=torch.bool)
    members: list[list[int]] = [[i] for i in range(k)]
    while int(alive.sum()) > 1:
        m = sim.masked_fill(~(alive[:, None] & alive[None, :]), -1.0)
        flat = int(torch.argmax(m))
        a, b = divmod(flat, k)
        if float(m[a, b]) < float(threshold):
            break
        # average linkage (Lance-Williams): the merged cluster's mean similarity to every other
        row = (size[a] * sim[a] + size[b] * sim[b]) / (size[a] + size[b])
        sim[a], sim[:, a] = row, row
        sim[a, a] = -1.0
        size[a] += size[b]
        alive[b] = False
        members[a] += members[b]
    clusters = [members[i] for i in range(k) if alive[i]]
    out = []
    for c in sorted(clusters, key=len, reverse=True):
        if len(c) < int(min_size):
            continue
        members = [idx[i] for i in c]
        out.append([_label(graph, members)] + [graph.node_ids[i] for i in members])
    return out


def _label(graph: AttributionGraph, members: list[int]) -> str:
    layers = [int(graph.features[i, 0]) for i in members]
    pos = Counter(int(graph.features[i, 1]) for i in members).most_common(1)[0][0]
    tok = graph.tokens[pos].strip() or repr(graph.tokens[pos])
    span = f"L{min(layers)}" if min(layers) == max(layers) else f"L{min(layers)}-{max(layers)}"
    return f"{span} @ {tok}"
