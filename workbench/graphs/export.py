"""The attribution-graph JSON that Anthropic's frontend, circuit-tracer and Neuronpedia read.

Top-level ``metadata`` (slug, scan = the model id, prompt, prompt_tokens, ...), ``qParams``
(pinnedIds, supernodes as ``[label, node_id, ...]``, linkType, clickedId, sg_pos), ``nodes`` and
``links`` (source, target, weight), with circuit-tracer's node ids and fields: features
``"{layer}_{feature}_{pos}"``, error nodes ``"0_{layer}_{pos}"``, tokens ``"E_{token id}_{pos}"``
and logits ``"{n_layers + 1}_{token id}_{pos}"``. `export_graph` writes the pruned graph (or
the whole one); `import_graph` reads such a file back as an `AttributionGraph` for viewing
(its adjacency holds the exported links only, so a re-import exports the same JSON).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.fileio import atomic_json

if TYPE_CHECKING:
    from .graph import AttributionGraph

__all__ = ["export_graph", "to_json_id", "from_json_id", "cumulative_influence", "GENERATOR", "FEATURE_TYPES"]

GENERATOR = {"name": "interp-workbench", "url": "https://github.com/interp-workbench"}
FEATURE_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error", "token": "embedding",
          "logit": "logit"}


def _json_ids(graph: AttributionGraph, keep: torch.Tensor | None = None) -> list[str]:
    """Every node's JSON id; an error id that would collide with a kept layer-0 feature's gets ``_err``."""
    ids = list(graph.node_ids)
    kept = range(graph.n_features) if keep is None else keep[:graph.n_features].nonzero().flatten().tolist()
    feats = {ids[i] for i in kept}
    for i in range(graph.error_start, graph.token_start):
        L, p = divmod(i - graph.error_start, graph.n_pos)
        jid = f"0_{L}_{p}"
        ids[i] = jid if jid not in feats else f"{jid}_err"
    return ids


def to_json_id(graph: AttributionGraph, node: str | int) -> str:
    """The JSON id of a node (only error nodes differ from `AttributionGraph.node_ids`)."""
    return _json_ids(graph)[graph.index(node)]


def from_json_id(graph: AttributionGraph, jid: str) -> str:
    """The graph's node id of a JSON id."""
    ids = _json_ids(graph)
    try:
        return graph.node_ids[ids.index(str(jid))]
    except ValueError:
        return graph.node_ids[graph.index(str(jid))]


def cumulative_influence(inf: torch.Tensor) -> torch.Tensor:
    """Each node's cumulative influence rank: the fraction of total influence of it and every node above it."""
    order = torch.argsort(inf, descending=True)
    out = torch.zeros_like(inf)
    out[order] = torch.cumsum(inf[order], 0) / inf.sum().clamp(min=1e-30)
    return out


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(float(v)) else None


def export_graph(graph: AttributionGraph, path: str | Path | None = None, *, node_threshold: float = 0.8,
                 edge_threshold: float = 0.98, prune: bool | None = None, slug: str | None = None,
                 scan: str | None = None) -> dict[str, Any]:
    """The graph as attribution-graph JSON (written atomically to ``path`` when given).

    ``prune`` (default: True, False for an imported graph) keeps what `AttributionGraph.prune`
    keeps at the two thresholds; node ``influence`` is the cumulative influence rank, as in
    circuit-tracer. Pins, supernodes and labels go into ``qParams`` and the nodes' ``clerp``.
    """
    imported = bool(graph.settings.get("imported"))
    prune = (not imported) if prune is None else bool(prune)
    if prune:
        pg = graph.prune(node_threshold, edge_threshold)
        keep, edges, cum = pg.masks.nodes, pg.masks.edges, pg.masks.cumulative
    else:
        present = graph.settings.get("present")
        keep = torch.ones(graph.n_nodes, dtype=torch.bool)
        if present is not None:
            keep = torch.zeros(graph.n_nodes, dtype=torch.bool)
            keep[torch.tensor(present, dtype=torch.long)] = True
        edges = graph.adjacency != 0
        stored = graph.settings.get("node_influence")
        if stored:
            cum = torch.tensor([float(stored.get(i, float("nan"))) for i in graph.node_ids])
        else:
            cum = cumulative_influence(graph.influence())
    jids = _json_ids(graph, keep)
    nodes = []
    s = graph.n_pos
    for i in keep.nonzero().flatten().tolist():
        info = graph.node(i)
        k, jid = info["kind"], jids[i]
        node: dict[str, Any] = {"node_id": jid, "feature_type": FEATURE_TYPES[k], "ctx_idx": int(info["pos"]),
                                "clerp": info["label"], "influence": _finite(cum[i]), "activation": None}
        if k == "feature":
            node.update(feature=int(info["feature"]), layer=str(info["layer"]),
                        jsNodeId=f"{info['layer']}_{info['feature']}-0", activation=_finite(info["activation"]))
        elif k == "error":
            node.update(feature=-1, layer=str(info["layer"]), jsNodeId=f"{info['layer']}_{info['pos']}-0")
        elif k == "token":
            tid = graph.token_ids[info["pos"]]
            node.update(feature=int(info["pos"]), layer="E", jsNodeId=f"E_{tid}-{info['pos']}")
        else:
            j = i - graph.logit_start
            tid = graph.logit_ids[j]
            p = float(graph.logit_probs[j])
            node.update(feature=int(tid), layer=str(graph.n_layers + 1), jsNodeId=f"L_{tid}-{s - 1}",
                        token_prob=p, is_target_logit=j == 0,
                        clerp=info["label"] or f'Output "{graph.logit_tokens[j]}" (p={p:.3f})')
        nodes.append(node)
    t, src = (edges & keep[:, None] & keep[None, :]).nonzero(as_tuple=True)
    links = [{"source": jids[a], "target": jids[b], "weight": float(w)}
             for a, b, w in zip(src.tolist(), t.tolist(), graph.adjacency[t, src].tolist(), strict=True)]
    kept = {n["node_id"] for n in nodes}
    mapped = lambda ids: [jids[graph.index(x)] for x in ids if jids[graph.index(x)] in kept]  # noqa: E731
    meta: dict[str, Any] = {
        "slug": slug or graph.settings.get("slug") or _slug(graph.prompt),
        "scan": scan or graph.scan or graph.model_name or "unknown",
        "prompt_tokens": list(graph.tokens), "prompt": graph.prompt,
        "info": {"generator": dict(GENERATOR), "source_urls": []},
        "generation_settings": {k: graph.settings[k] for k in ("max_n_logits", "desired_logit_prob", "batch_size",
                                                                 "max_feature_nodes") if k in graph.settings},
        "transcoder_list": [],
    }
    if prune:
        meta["node_threshold"] = float(node_threshold)
        meta["pruning_settings"] = {"node_threshold": float(node_threshold), "edge_threshold": float(edge_threshold)}
    elif "node_threshold" in graph.settings:
        meta["node_threshold"] = float(graph.settings["node_threshold"])
        meta["pruning_settings"] = dict(graph.settings.get("pruning_settings") or {})
    out = {
        "metadata": meta,
        "qParams": {"pinnedIds": mapped(graph.pinned),
                    "supernodes": [[str(sn[0])] + mapped(sn[1:]) for sn in graph.supernodes],
                    "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes, "links": links,
    }
    if path is not None:
        atomic_json(Path(path), out)
    return out


def _slug(prompt: str) -> str:
    words = "".join(c.lower() if c.isalnum() else "-" for c in prompt).split("-")
    return "-".join(w for w in words if w)[:48] or "graph"
