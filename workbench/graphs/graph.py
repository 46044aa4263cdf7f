"""`AttributionGraph`: the direct-effect graph of one prompt through a transcoder replacement model.

Nodes, in this order (circuit-tracer's): active features ``(layer, position, feature)``, error
nodes ``(layer, position)`` for every layer and position (a layer without a transcoder keeps its
real MLP, which is then all error), token embeddings (position) and the output logits.
``adjacency[target, source]`` is the direct effect of the source on the target's
pre-activation (features) or demeaned logit (logits) through the frozen linear paths: its
activation times the gradient. ``values`` is each target row's own value and ``bias`` what the
constants (encoder and decoder biases) give it, so ``adjacency.sum(1) + bias == values`` for
every feature and logit row.

Node ids are the attribution-graph JSON's: ``"{layer}_{feature}_{pos}"`` for features,
``"E_{token id}_{pos}"`` for tokens, ``"{n_layers + 1}_{token id}_{pos}"`` for logits; error nodes
are ``"err_{layer}_{pos}"`` here (the JSON's ``"0_{layer}_{pos}"`` can collide with a layer-0 feature).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.fileio import atomic_json
from ..core.viewers import Showable
from .errors import GraphError
from .pruning import GraphScores, PruneMasks, graph_scores, node_influence, prune_masks

__all__ = ["AttributionGraph", "PrunedGraph", "GRAPH_FORMAT"]

GRAPH_FORMAT = "workbench.attribution_graph/1"


@dataclass(eq=False)
class AttributionGraph(Showable):
    """The attribution graph of one prompt (see the module docstring for the node order and ids).

    ``features [F, 3]`` long (layer, position, feature) and ``activations [F]``; ``logit_ids``,
    ``logit_probs [K]`` and ``logit_tokens`` the output nodes; ``adjacency [n, n]``, ``values [n]``
    and ``bias [n]`` float32. ``labels`` maps node ids to text; ``pinned`` and ``supernodes``
    (lists ``[label, id, id, ...]``) are the user's, and travel into the exported JSON.
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    n_layers: int
    features: torch.Tensor
    activations: torch.Tensor
    logit_ids: list[int]
    logit_probs: torch.Tensor
    logit_tokens: list[str]
    adjacency: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor
    model_name: str = ""
    scan: str = ""
    covered_layers: list[int] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)
    supernodes: list[list[str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False)
    transcoders: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.features = torch.as_tensor(self.features, dtype=torch.long).reshape(-1, 3)
        self.activations = torch.as_tensor(self.activations, dtype=torch.float32).reshape(-1)
        self.logit_probs = torch.as_tensor(self.logit_probs, dtype=torch.float32).reshape(-1)
        self.adjacency = torch.as_tensor(self.adjacency, dtype=torch.float32)
        self.values = torch.as_tensor(self.values, dtype=torch.float32).reshape(-1)
        self.bias = torch.as_tensor(self.bias, dtype=torch.float32).reshape(-1)
        self.token_ids = [int(t) for t in self.token_ids]
        self.logit_ids = [int(t) for t in self.logit_ids]
        n = self.n_nodes
        if self.features.shape[0] != self.activations.shape[0]:
            raise GraphError(f"{self.features.shape[0]} features but {self.activations.shape[0]} activations")
        if len(self.tokens) != len(self.token_ids):
            raise GraphError(f"{len(self.tokens)} token texts but {len(self.token_ids)} token ids")
        if len(self.logit_ids) != self.logit_probs.numel() or len(self.logit_tokens) != len(self.logit_ids):
            raise GraphError("logit_ids, logit_probs and logit_tokens must have one entry per logit node")
        for name in ("values", "bias"):
            if getattr(self, name).numel() != n:
                raise GraphError(f"{name} has {getattr(self, name).numel()} entries; the graph has {n} nodes")
        if tuple(self.adjacency.shape) != (n, n):
            raise GraphError(f"adjacency has shape {list(self.adjacency.shape)}; the graph has {n} nodes "
                             f"({self.n_features} features, {self.n_errors} errors, {self.n_pos} tokens, "
                             f"{self.n_logits} logits)")
        if not bool(torch.isfinite(self.adjacency).all()):
            raise GraphError("the adjacency holds NaN or infinite weights")
        self._ids: list[str] | None = None
        self._index: dict[str, int] | None = None

    # -- sizes and ids ---------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_pos(self) -> int:
        return len(self.token_ids)

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_pos

    @property
    def n_logits(self) -> int:
        return len(self.logit_ids)

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_pos + self.n_logits

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_errors

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def kind(self, i: int) -> str:
        """``"feature"``, ``"error"``, ``"token"`` or ``"logit"``: the kind of node ``i``."""
        if i < self.error_start:
            return "feature"
        if i < self.token_start:
            return "error"
        return "token" if i < self.logit_start else "logit"

    @property
    def node_ids(self) -> list[str]:
        """Every node's id, in node order."""
        if self._ids is None:
            ids = [f"{L}_{f}_{p}" for L, p, f in self.features.tolist()]
            ids += [f"err_{L}_{p}" for L in range(self.n_layers) for p in range(self.n_pos)]
            ids += [f"E_{t}_{p}" for p, t in enumerate(self.token_ids)]
            ids += [f"{self.n_layers + 1}_{t}_{self.n_pos - 1}" for t in self.logit_ids]
            self._ids = ids
        return self._ids

    def index(self, node: str | int) -> int:
        """The index of a node id (or an index, checked)."""
        if isinstance(node, int) and not isinstance(node, bool):
            if not 0 <= node < self.n_nodes:
                raise GraphError(f"node index {node} is out of range: the graph has {self.n_nodes} nodes")
            return node
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.node_ids)}
        try:
            return self._index[str(node)]
        except KeyError:
            raise GraphError(f"no node {node!r} in this graph; ids look like '3_1207_5' (feature), 'err_3_5', "
                             f"'E_{self.token_ids[0] if self.token_ids else 0}_0' (token) or a logit id") from None

    def node(self, node: str | int) -> dict[str, Any]:
        """One node as a dict: id, kind, layer, position, feature, activation, label (and token / prob)."""
        i = self.index(node)
        k = self.kind(i)
        out: dict[str, Any] = {"id": self.node_ids[i], "index": i, "kind": k}
        if k == "feature":
            L, p, f = self.features[i].tolist()
            out.update(layer=L, pos=p, feature=f, activation=float(self.activations[i]))
        elif k == "error":
            L, p = divmod(i - self.error_start, self.n_pos)
            out.update(layer=L, pos=p, feature=None, activation=None)
        elif k == "token":
            p = i - self.token_start
            out.update(layer=-1, pos=p, feature=None, activation=None, token=self.tokens[p])
        else:
            j = i - self.logit_start
            out.update(layer=self.n_layers, pos=self.n_pos - 1, feature=None, activation=None,
                       token=self.logit_tokens[j], prob=float(self.logit_probs[j]))
        out["label"] = self.labels.get(out["id"], "")
        return out

    @property
    def logit_weights(self) -> torch.Tensor:
        """``[n]``: the logits' probabilities at the logit nodes, zero elsewhere (influence's weights)."""
        w = torch.zeros(self.n_nodes)
        w[self.logit_start:] = self.logit_probs
        return w

    # -- analysis --------------------------------------------------------------------------
    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PrunedGraph:
        """circuit-tracer's pruning (see `workbench.graphs.pruning`), as a `PrunedGraph` view."""
        m = prune_masks(self.adjacency, self.logit_weights, self.n_features, self.n_pos, self.n_logits,
                        node_threshold, edge_threshold)
        return PrunedGraph(self, m, float(node_threshold), float(edge_threshold))

    def scores(self) -> GraphScores:
        """The replacement and completeness scores of the whole graph."""
        return graph_scores(self.adjacency, self.logit_weights, self.n_features, self.n_errors, self.n_pos)

    def influence(self) -> torch.Tensor:
        """Each node's influence on the logits ``[n]`` (probability-weighted, row-normalized)."""
        return node_influence(self.adjacency, self.logit_weights)

    def predict(self, nodes: dict[str | int, float]) -> torch.Tensor:
        """The graph's prediction of each logit node's change ``[K]`` (demeaned logits) when each given
        node's activation is multiplied by its factor (0: zeroed; errors and tokens: their whole vector).

        The change travels along the graph's linear edges: a source's direct effect per unit is
        ``adjacency[t, s] / activation[s]`` (errors and tokens: per whole vector), a feature's change of
        pre-activation is a change of its activation one to one (active, linearized), and the edited
        nodes stay clamped at their edited values.
        """
        n, nf = self.n_nodes, self.n_features
        scale = torch.ones(n, dtype=torch.float64)
        scale[:nf] = self.activations.double()
        scale = torch.where(scale.abs() > 0, scale, torch.ones_like(scale))
        a = self.adjacency.double()
        x = torch.zeros(n, dtype=torch.float64)
        clamped = torch.zeros(n, dtype=torch.bool)
        for node, factor in nodes.items():
            i = self.index(node)
            k = self.kind(i)
            if k == "logit":
                raise GraphError(f"node {self.node_ids[i]} is a logit: it has no activation to edit")
            base = float(self.activations[i]) if k == "feature" else 1.0
            x[i] = (float(factor) - 1.0) * base
            clamped[i] = True
        free = torch.zeros(n, dtype=torch.bool)
        free[:nf] = True
        free &= ~clamped
        pre = a @ (x / scale)
        for _ in range(n + 1):
            new = torch.where(free, pre, x)
            if torch.equal(new, x):
                break
            x = new
            pre = a @ (x / scale)
        return pre[self.logit_start:].float()

    def intervene(self, nodes: dict[str | int, float], top_k: int = 5) -> Any:
        """Edit ``{node: factor}`` on the real model and compare with the prediction (`Intervention`)."""
        from .verify import intervene

        return intervene(self, nodes, top_k)

    def verify(self, top: int = 20, factor: float = 0.0, kinds: tuple[str, ...] = ("feature", "error"),
               progress: bool = True, freeze_uncovered: bool = False) -> Any:
        """Edit each of the ``top`` most influential nodes (of ``kinds``) alone on the real model and
        correlate the measured logit changes with the predicted ones (`Verification`; see `verify`)."""
        from .verify import verify

        return verify(self, top, factor, kinds, progress=progress, freeze_uncovered=freeze_uncovered)

    def export(self, path: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
        """Attribution-graph JSON for Anthropic's frontend and Neuronpedia (see `export_graph`)."""
        from .export import export_graph

        return export_graph(self, path, **kwargs)

    # -- tables and views --------------------------------------------------------------------
    def to_pandas(self, pruned: PrunedGraph | None = None) -> Any:
        """``(nodes, edges)`` DataFrames: one row per node, one per nonzero edge (source, target, weight)."""
        import pandas as pd

        keep = pruned.masks.nodes if pruned is not None else torch.ones(self.n_nodes, dtype=torch.bool)
        inf = pruned.masks.influence if pruned is not None else self.influence()
        rows = []
        for i in keep.nonzero().flatten().tolist():
            r = self.node(i)
            r["influence"] = float(inf[i])
            rows.append(r)
        nodes = pd.DataFrame(rows)
        a = self.adjacency if pruned is None else self.adjacency * pruned.masks.edges
        t, s = a.nonzero(as_tuple=True)
        ids = self.node_ids
        edges = pd.DataFrame({"source": [ids[j] for j in s.tolist()], "target": [ids[j] for j in t.tolist()],
                              "weight": a[t, s].tolist()})
        return nodes, edges

    def plot(self, node_threshold: float = 0.8, edge_threshold: float = 0.98, ax: Any = None) -> Any:
        """A static matplotlib drawing of the pruned graph: x the position, y the layer."""
        return self.prune(node_threshold, edge_threshold).plot(ax=ax)

    def __repr__(self) -> str:
        return (f"AttributionGraph({self.prompt!r}: {self.n_features} features, {self.n_errors} error nodes, "
                f"{self.n_pos} tokens, {self.n_logits} logits; top {self.logit_tokens[:1]!r})")

    # -- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The whole graph as JSON-ready data (the adjacency as its nonzero entries)."""
        t, s = self.adjacency.nonzero(as_tuple=True)
        return {
            "format": GRAPH_FORMAT, "prompt": self.prompt, "tokens": list(self.tokens),
            "token_ids": self.token_ids, "n_layers": self.n_layers, "features": self.features.tolist(),
            "activations": self.activations.tolist(), "logit_ids": self.logit_ids,
            "logit_probs": self.logit_probs.tolist(), "logit_tokens": list(self.logit_tokens),
            "edges": {"target": t.tolist(), "source": s.tolist(), "weight": self.adjacency[t, s].tolist()},
            "values": self.values.tolist(), "bias": self.bias.tolist(), "model_name": self.model_name,
            "scan": self.scan, "covered_layers": list(self.covered_layers), "labels": dict(self.labels),
            "pinned": list(self.pinned), "supernodes": [list(s) for s in self.supernodes],
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttributionGraph:
        """The inverse of `to_dict` (a clear `GraphError` for anything else)."""
        if not isinstance(d, dict) or d.get("format") != GRAPH_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise GraphError(f"not a workbench attribution graph (format {got!r}, expected {GRAPH_FORMAT!r}); "
                             "for circuit-tracer or Neuronpedia JSON use workbench.graphs.import_graph")
        try:
            feats = torch.tensor(d["features"], dtype=torch.long).reshape(-1, 3)
            n = (feats.shape[0] + int(d["n_layers"]) * len(d["token_ids"]) + len(d["token_ids"])
                 + len(d["logit_ids"]))
            adj = torch.zeros(n, n)
            e = d["edges"]
            if e["target"]:
                adj[torch.tensor(e["target"]), torch.tensor(e["source"])] = torch.tensor(e["weight"], dtype=torch.float32)
            return cls(prompt=str(d["prompt"]), tokens=list(d["tokens"]), token_ids=list(d["token_ids"]),
                       n_layers=int(d["n_layers"]), features=feats, activations=d["activations"],
                       logit_ids=list(d["logit_ids"]), logit_probs=d["logit_probs"],
                       logit_tokens=list(d["logit_tokens"]), adjacency=adj, values=d["values"], bias=d["bias"],
                       model_name=str(d.get("model_name", "")), scan=str(d.get("scan", "")),
                       covered_layers=list(d.get("covered_layers", [])), labels=dict(d.get("labels", {})),
                       pinned=list(d.get("pinned", [])), supernodes=[list(s) for s in d.get("supernodes", [])],
                       settings=dict(d.get("settings", {})))
        except GraphError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise GraphError(f"corrupt attribution graph data: {type(exc).__name__}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write the graph as JSON (atomically); `AttributionGraph.load` reads it back."""
        p = Path(path)
        atomic_json(p, self.to_dict())
        return p

    @classmethod
    def load(cls, path: str | Path, model: Any = None, transcoders: Any = None) -> AttributionGraph:
        """Read a graph written by `save` (``model``/``transcoders`` re-attach what verification needs)."""
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise GraphError(f"no graph file at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GraphError(f"{path} is not valid JSON ({exc}): the file is corrupt or truncated") from None
        g = cls.from_dict(d)
        g.model, g.transcoders = model, transcoders
        return g


@dataclass(eq=False)
class PrunedGraph(Showable):
    """A pruned view of an `AttributionGraph`: the kept nodes and edges at two thresholds."""

    graph: AttributionGraph
    masks: PruneMasks
    node_threshold: float
    edge_threshold: float

    @property
    def n_nodes(self) -> int:
        return int(self.masks.nodes.sum())

    @property
    def n_edges(self) -> int:
        return int(self.masks.edges.sum())

    @property
    def node_ids(self) -> list[str]:
        ids = self.graph.node_ids
        return [ids[i] for i in self.masks.nodes.nonzero().flatten().tolist()]

    @property
    def adjacency(self) -> torch.Tensor:
        """The full graph's adjacency with the pruned edges (and nodes) set to zero."""
        return self.graph.adjacency * self.masks.edges

    def scores(self) -> GraphScores:
        """Replacement and completeness scores of the pruned graph (pruned edges removed)."""
        g = self.graph
        return graph_scores(self.adjacency, g.logit_weights, g.n_features, g.n_errors, g.n_pos)

    def to_pandas(self) -> Any:
        return self.graph.to_pandas(self)

    def plot(self, ax: Any = None) -> Any:
        """Matplotlib: nodes at (position, layer), size by influence; edges blue (+) / red (-)."""
        import matplotlib.pyplot as plt

        g = self.graph
        if ax is None:
            _, ax = plt.subplots(figsize=(max(6, g.n_pos * 0.9), 6))
        keep = self.masks.nodes.nonzero().flatten().tolist()
        xy = {}
        for i in keep:
            n = g.node(i)
            jitter = (hash(n["id"]) % 100) / 250 - 0.2 if n["kind"] == "feature" else 0.0
            xy[i] = (n["pos"] + jitter, n["layer"] + (0.5 if n["kind"] == "error" else 0))
        a = self.adjacency
        t, s = a.nonzero(as_tuple=True)
        wmax = float(a.abs().max()) if a.numel() else 1.0
        for ti, si in zip(t.tolist(), s.tolist(), strict=True):
            if ti in xy and si in xy:
                w = float(a[ti, si])
                ax.plot([xy[si][0], xy[ti][0]], [xy[si][1], xy[ti][1]], color="tab:blue" if w > 0 else "tab:red",
                        lw=0.3 + 2.5 * abs(w) / max(wmax, 1e-12), alpha=0.5, zorder=1)
        inf = self.masks.influence
        imax = float(inf.max()) if inf.numel() else 1.0
        colors = {"feature": "tab:orange", "error": "tab:gray", "token": "tab:green", "logit": "tab:purple"}
        for i, (x, y) in xy.items():
            k = g.kind(i)
            size = 20 + 200 * (float(inf[i]) / max(imax, 1e-12) if k not in ("token", "logit") else 0.3)
            ax.scatter([x], [y], s=size, color=colors[k], zorder=2, edgecolors="k", linewidths=0.3)
        ax.set_xticks(range(g.n_pos))
        ax.set_xticklabels(g.tokens, rotation=45, ha="right")
        ax.set_ylabel("layer")
        ax.set_title(f"{self.n_nodes} nodes, {self.n_edges} edges (node {self.node_threshold}, "
                     f"edge {self.edge_threshold})")
        return ax

    def __repr__(self) -> str:
        return (f"PrunedGraph({self.n_nodes} of {self.graph.n_nodes} nodes, {self.n_edges} edges at "
                f"node_threshold={self.node_threshold}, edge_threshold={self.edge_threshold})")


def finite_or_none(v: float) -> float | None:
    """``v`` when finite, else None (JSON has no NaN)."""
    return v if math.isfinite(v) else None
