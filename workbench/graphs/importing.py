"""Reading attribution-graph JSON (circuit-tracer, Neuronpedia, or `export_graph`) for viewing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .errors import GraphError
from .graph import AttributionGraph

__all__ = ["import_graph"]


def _read(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    try:
        return json.loads(Path(source).read_text())
    except FileNotFoundError:
        raise GraphError(f"no graph file at {source}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GraphError(f"{source} is not valid JSON ({exc}): the file is corrupt or truncated") from None


def import_graph(source: str | Path | dict[str, Any]) -> AttributionGraph:
    """An attribution-graph JSON (circuit-tracer, Neuronpedia, or `export_graph`) as an `AttributionGraph`.

    The result views, prunes and re-exports; it has no model attached, so it cannot verify.
    """
    d = _read(source)
    for key in ("metadata", "nodes", "links"):
        if key not in d:
            raise GraphError(f"not an attribution-graph JSON: the top-level key {key!r} is missing "
                             "(expected metadata, qParams, nodes, links)")
    try:
        return _build(d)
    except GraphError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise GraphError(f"corrupt attribution-graph JSON: {type(exc).__name__}: {exc}") from None


def _build(d: dict[str, Any]) -> AttributionGraph:
    meta = d["metadata"]
    tokens = [str(t) for t in meta["prompt_tokens"]]
    s = len(tokens)
    feats, acts, errors, logits = [], [], {}, []
    token_ids = [0] * s
    by_type: dict[str, list[dict]] = {}
    for n in d["nodes"]:
        by_type.setdefault(str(n["feature_type"]), []).append(n)
    n_layers = None
    for n in by_type.get("logit", []):
        n_layers = int(n["layer"]) - 1
    for n in d["nodes"]:
        t = str(n["feature_type"])
        if t == "embedding":
            p = int(n["ctx_idx"])
            token_ids[p] = int(str(n["node_id"]).split("_")[1])
        elif t == "mlp reconstruction error":
            errors[str(n["node_id"])] = (int(n["layer"]), int(n["ctx_idx"]))
        elif t == "logit":
            logits.append(n)
        else:  # transcoder / cross layer transcoder features
            parts = str(n["node_id"]).split("_")
            feats.append((int(parts[0]), int(n["ctx_idx"]), int(parts[1])))
            acts.append(float(n["activation"]) if n.get("activation") is not None else 1.0)
    if n_layers is None:
        layers = [f[0] for f in feats] + [e[0] for e in errors.values()]
        n_layers = max(layers) + 1 if layers else 1
    logit_ids = [int(n["feature"]) for n in logits]
    probs = [float(n.get("token_prob", 0.0)) for n in logits]
    ltoks = []
    for n in logits:
        c = str(n.get("clerp", ""))
        ltoks.append(c.split('"')[1] if c.count('"') >= 2 else str(n["feature"]))
    F = len(feats)
    g = AttributionGraph(prompt=str(meta["prompt"]), tokens=tokens, token_ids=token_ids, n_layers=n_layers,
                         features=torch.tensor(feats, dtype=torch.long).reshape(-1, 3), activations=acts,
                         logit_ids=logit_ids, logit_probs=probs, logit_tokens=ltoks,
                         adjacency=torch.zeros(F + n_layers * s + s + len(logits), F + n_layers * s + s + len(logits)),
                         values=torch.zeros(F + n_layers * s + s + len(logits)),
                         bias=torch.zeros(F + n_layers * s + s + len(logits)), model_name=str(meta.get("scan", "")),
                         scan=str(meta.get("scan", "")))
    # JSON id -> index
    index: dict[str, int] = {}
    for i, (L, p, f) in enumerate(feats):
        index[f"{L}_{f}_{p}"] = i
    for jid, (L, p) in errors.items():
        index[jid] = g.error_start + L * s + p
    for p, tid in enumerate(token_ids):
        index[f"E_{tid}_{p}"] = g.token_start + p
    for j, n in enumerate(logits):
        index[str(n["node_id"])] = g.logit_start + j
    rows, cols, ws = [], [], []
    for link in d["links"]:
        try:
            a, b = index[str(link["source"])], index[str(link["target"])]
        except KeyError as exc:
            raise GraphError(f"a link names node {exc.args[0]!r}, which is not among the nodes") from None
        w = float(link["weight"])
        if not math.isfinite(w):
            raise GraphError(f"link {link['source']} -> {link['target']} has a non-finite weight {link['weight']!r}")
        rows.append(b)
        cols.append(a)
        ws.append(w)
    if rows:
        g.adjacency[torch.tensor(rows), torch.tensor(cols)] = torch.tensor(ws)
    labels, infl = {}, {}
    ids = g.node_ids
    for n in d["nodes"]:
        jid = str(n["node_id"])
        if jid not in index:
            continue
        nid = ids[index[jid]]
        if n.get("clerp") and str(n["feature_type"]) != "logit":
            labels[nid] = str(n["clerp"])
        if n.get("influence") is not None:
            infl[nid] = float(n["influence"])
    g.labels = labels
    q = d.get("qParams") or {}
    back = {jid: ids[i] for jid, i in index.items()}
    g.pinned = [back[x] for x in q.get("pinnedIds", []) if x in back]
    g.supernodes = [[str(sn[0])] + [back[x] for x in sn[1:] if x in back] for sn in q.get("supernodes", []) if sn]
    g.settings = {"imported": True, "node_influence": infl, "slug": meta.get("slug", ""),
                  **{k: v for k, v in (meta.get("generation_settings") or {}).items()}}
    if "node_threshold" in meta:
        g.settings["node_threshold"] = meta["node_threshold"]
        g.settings["pruning_settings"] = meta.get("pruning_settings") or {}
    # nodes the JSON left out are kept out of an unpruned re-export: mark them
    present = torch.zeros(g.n_nodes, dtype=torch.bool)
    present[list(index.values())] = True
    g.settings["present"] = present.nonzero().flatten().tolist()
    return g
