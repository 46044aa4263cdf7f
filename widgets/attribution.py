"""AttributionGraph: an attribution graph explored live, pruned by the kernel, verified on the real model.

    g = wb.attribute(model, "The capital of France is", tset)
    w = AttributionGraph(g, store=store, dictionary_for=tset)   # or g.show(...), g.prune(...).show()
    w.pinned, w.supernodes                                        # also written into g.pinned / g.supernodes
    w.intervene(["12_301_4"], "scale", 2.0)                      # the real model reruns (`Intervention`)
    w.export("france.json")                                      # attribution-graph JSON, pins included

In the browser: input tokens run along the bottom by position and the logits along the top;
features and error nodes sit at (position, layer), the nodes of one cell spread over it, most
influential first. A node's size is its influence, an edge's colour its sign (blue +, red −)
and its width |weight|. Edges are drawn on a canvas, nodes as SVG (hover, click).

- The node and edge threshold sliders ask the kernel to re-prune (`rpc_prune`: circuit-tracer's
  pruning, `AttributionGraph.prune`); only the kept nodes and edges travel, as binary buffers
  (uint8 kinds, int8/int32 layers, uint16/int32 positions, int32 features and token ids, float32
  influence, activation and weights; edge ends as indices into the sent nodes, uint16 when they fit).
- Hover a node: its label (``graph.labels``) and, with a scan store, a feature's top exemplar
  windows (``store.top`` and the windows' tokens; no model rerun).
- Click a node: it is selected (or unselected) and inspected; a feature opens its
  `FeatureDashboard` below the graph when ``dictionary_for`` gives its layer's dictionary
  (a callable ``layer -> Dictionary`` or a `TranscoderSet`). Shift-click pins (un-pins) it.
- The selected nodes can be pinned, grouped into a labelled supernode, edited (zero, or scale
  ×k) on the real model: the top next tokens before and after, and each logit node's measured
  change beside the graph's prediction (`AttributionGraph.intervene`); "generate" streams a
  generation with the same edit. "propose supernodes" calls `workbench.graphs.propose_supernodes`.
- Export writes `AttributionGraph.export` at the current thresholds (pins and supernodes in its
  ``qParams``) to ``path`` (or a default name) and reports where.

Token texts and labels travel as JSON strings and the view sets them as text, never as HTML.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets
import numpy as np
import torch
import traitlets

from workbench.graphs import AttributionGraph as Graph
from workbench.graphs import GraphError, PrunedGraph, node_edits, propose_supernodes

from ._base import Job, WorkbenchWidget, bundle, rpc
from ._payload import as_int, finite_float, json_float
from ._stream import generation, keyed

__all__ = ["AttributionGraph", "graph_payload", "KIND_CODES"]

#: Node kinds as the view codes them.
KIND_CODES = {"feature": 0, "error": 1, "token": 2, "logit": 3}
EDIT_OPS = ("zero", "scale")
_CACHE = 32


def _threshold(name: str, v: Any) -> float:
    x = finite_float(name, v)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, not {x}")
    return round(x, 4)


def _columns(g: Graph) -> dict[str, np.ndarray]:
    """Per-node columns of the whole graph: kind code, layer, position, feature (token id for tokens
    and logits, -1 for errors), activation (NaN where none)."""
    n, nf, s = g.n_nodes, g.n_features, g.n_pos
    kind = np.zeros(n, np.uint8)
    kind[g.error_start:g.token_start] = 1
    kind[g.token_start:g.logit_start] = 2
    kind[g.logit_start:] = 3
    feats = g.features.numpy()
    layer = np.empty(n, np.int64)
    pos = np.empty(n, np.int64)
    feature = np.full(n, -1, np.int64)
    layer[:nf], pos[:nf], feature[:nf] = feats[:, 0], feats[:, 1], feats[:, 2]
    e = np.arange(g.n_errors)
    layer[g.error_start:g.token_start], pos[g.error_start:g.token_start] = e // max(s, 1), e % max(s, 1)
    layer[g.token_start:g.logit_start], pos[g.token_start:g.logit_start] = -1, np.arange(s)
    feature[g.token_start:g.logit_start] = g.token_ids
    layer[g.logit_start:], pos[g.logit_start:], feature[g.logit_start:] = g.n_layers, s - 1, g.logit_ids
    act = np.full(n, np.nan, np.float32)
    act[:nf] = g.activations.numpy()
    return {"kind": kind, "layer": layer, "pos": pos, "feature": feature, "activation": act}


def _small(x: np.ndarray, lo: int, hi: int, small: Any, big: Any = np.int32) -> np.ndarray:
    return x.astype(small if x.size == 0 or (x.min() >= lo and x.max() <= hi) else big)


def graph_payload(g: Graph, pg: PrunedGraph, max_edges: int, columns: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """What the view draws of a pruned graph: the kept nodes' columns and the kept edges (the
    strongest ``max_edges`` by |weight|), arrays for the binary transport."""
    cols = columns if columns is not None else _columns(g)
    keep = pg.masks.nodes.nonzero().flatten()
    k = keep.numpy()
    sub = pg.masks.edges[keep][:, keep]
    t, s = sub.nonzero(as_tuple=True)
    w = g.adjacency[keep[t], keep[s]]
    n_edges = int(w.numel())
    order = torch.argsort(w.abs(), descending=True, stable=True)[:max_edges]
    t, s, w = t[order], s[order], w[order]
    ids = g.node_ids
    labels = {str(j): g.labels[ids[i]] for j, i in enumerate(k.tolist()) if g.labels.get(ids[i])}
    node_ix = (lambda x: x.numpy().astype(np.uint16)) if len(k) <= np.iinfo(np.uint16).max else (
        lambda x: x.numpy().astype(np.int32))
    sc = pg.scores()
    return {
        "thresholds": {"node": pg.node_threshold, "edge": pg.edge_threshold},
        "counts": {"nodes": int(len(k)), "edges": n_edges, "sent_edges": int(w.numel()),
                   "total_nodes": g.n_nodes, "total_features": g.n_features},
        "scores": {"replacement": json_float(sc.replacement), "completeness": json_float(sc.completeness)},
        "nodes": {
            "index": k.astype(np.int32),
            "kind": cols["kind"][k],
            "layer": _small(cols["layer"][k], -128, 127, np.int8),
            "pos": _small(cols["pos"][k], 0, 65535, np.uint16),
            "feature": cols["feature"][k].astype(np.int32),
            "influence": pg.masks.influence[keep].numpy().astype(np.float32),
            "activation": cols["activation"][k],
        },
        "labels": labels,
        "edges": {"src": node_ix(s), "dst": node_ix(t), "weight": w.numpy().astype(np.float32)},
    }


class AttributionGraph(WorkbenchWidget):
    """The live view of an `workbench.graphs.AttributionGraph` (see the module docstring).

    ``node_threshold`` / ``edge_threshold``: the pruning shown; ``pinned``, ``supernodes``
    (``[label, id, ...]`` lists) and ``selected``: node ids, synced both ways (pins and
    supernodes are also written into the graph, so they travel into its export); ``path``: where
    export writes; ``last_export``: the path it wrote; ``detail``: the box below the graph where
    a clicked feature's dashboard opens.
    """

    _esm = bundle("attribution")

    title = traitlets.Unicode("").tag(sync=True)
    node_threshold = traitlets.Float(0.8).tag(sync=True)
    edge_threshold = traitlets.Float(0.98).tag(sync=True)
    pinned = traitlets.List(traitlets.Unicode(), []).tag(sync=True)
    supernodes = traitlets.List(traitlets.List(traitlets.Unicode()), []).tag(sync=True)
    selected = traitlets.List(traitlets.Unicode(), []).tag(sync=True)
    factor = traitlets.Float(2.0).tag(sync=True)  # the default scale factor of an edit
    max_new_tokens = traitlets.Int(20).tag(sync=True)
    path = traitlets.Unicode("").tag(sync=True)
    last_export = traitlets.Unicode("").tag(sync=True)
    version = traitlets.Int(0).tag(sync=True)  # bumped when the thresholds change from Python: the view reloads

    def __init__(self, graph: Graph | PrunedGraph, node_threshold: float | None = None,
                 edge_threshold: float | None = None, store: Any = None, dictionary_for: Any = None, *,
                 path: str | Path | None = None, max_edges: int = 20000, top_k: int = 5, exemplars: int = 3,
                 store_keys: dict[int, str] | Callable[[int], str] | None = None, title: str | None = None,
                 **kwargs: Any) -> None:
        if isinstance(graph, PrunedGraph):
            node_threshold = graph.node_threshold if node_threshold is None else node_threshold
            edge_threshold = graph.edge_threshold if edge_threshold is None else edge_threshold
            graph = graph.graph
        if not isinstance(graph, Graph):
            raise TypeError(f"AttributionGraph shows a workbench.graphs.AttributionGraph (wb.attribute(...)) or its "
                            f"PrunedGraph, not {type(graph).__name__}")
        if dictionary_for is not None and not (callable(dictionary_for) or callable(getattr(dictionary_for, "dictionary", None))):
            raise TypeError("dictionary_for must be a callable layer -> Dictionary or a TranscoderSet (with .dictionary(layer)), "
                            f"not {type(dictionary_for).__name__}")
        if store is not None and not (hasattr(store, "top") and hasattr(store, "window_tokens")):
            raise TypeError(f"store must be a ScanStore (wb.scan / ScanStore.open), not {type(store).__name__}")
        self.graph = graph
        self.store = store
        self.dictionary_for = dictionary_for
        self.store_keys = store_keys
        self.max_edges = as_int("max_edges", max_edges)
        self.top_k = as_int("top_k", top_k)
        self.n_exemplars = as_int("exemplars", exemplars)
        if self.max_edges < 1 or not 1 <= self.top_k <= 100:
            raise ValueError(f"max_edges must be at least 1 and top_k between 1 and 100 (got {max_edges}, {top_k})")
        nt = _threshold("node_threshold", 0.8 if node_threshold is None else node_threshold)
        et = _threshold("edge_threshold", 0.98 if edge_threshold is None else edge_threshold)
        self._cols = _columns(graph)
        self._payloads: OrderedDict[tuple[float, float], dict[str, Any]] = OrderedDict()
        self._pruned: OrderedDict[tuple[float, float], PrunedGraph] = OrderedDict()
        self._lock_prune = threading.Lock()
        self._lock_state = threading.RLock()
        self.detail = ipywidgets.VBox([])  # a clicked feature's FeatureDashboard opens here
        self.last_intervention: Any = None
        self.generated = ""
        if title is None:
            title = f"attribution graph · {graph.model_name or 'model'} · {graph.prompt!r}"
        super().__init__(node_threshold=nt, edge_threshold=et, title=title,
                         pinned=self._valid_ids(graph.pinned, "pinned"),
                         supernodes=self._valid_groups(graph.supernodes), path=str(path or ""), **kwargs)

    @classmethod
    def from_pruned(cls, pg: PrunedGraph, **kwargs: Any) -> AttributionGraph:
        """The viewer of ``graph.prune(...).show()``: the same thresholds."""
        return cls(pg, **kwargs)

    # -- validation -----------------------------------------------------------------------------
    def _valid_ids(self, ids: Iterable[Any], what: str) -> list[str]:
        out = []
        for v in ids:
            try:
                out.append(self.graph.node_ids[self.graph.index(str(v))])
            except GraphError as e:
                raise traitlets.TraitError(f"{what}: {e}") from None
        return list(dict.fromkeys(out))

    def _valid_groups(self, groups: Iterable[Sequence[Any]]) -> list[list[str]]:
        out = []
        for sn in groups:
            sn = [str(x) for x in sn]
            if len(sn) < 2 or not sn[0].strip():
                raise traitlets.TraitError(f"a supernode is [label, node id, ...] with a label and at least one node, not {sn!r}")
            out.append([sn[0].strip(), *self._valid_ids(sn[1:], f"supernode {sn[0]!r}")])
        return out

    @traitlets.validate("pinned")
    def _v_pinned(self, proposal: dict) -> list[str]:
        return sorted(self._valid_ids(proposal["value"], "pinned"))

    @traitlets.validate("selected")
    def _v_selected(self, proposal: dict) -> list[str]:
        return self._valid_ids(proposal["value"], "selected")

    @traitlets.validate("supernodes")
    def _v_supernodes(self, proposal: dict) -> list[list[str]]:
        return self._valid_groups(proposal["value"])

    @traitlets.validate("node_threshold", "edge_threshold")
    def _v_threshold(self, proposal: dict) -> float:
        return _threshold(proposal["trait"].name, proposal["value"])

    @traitlets.observe("pinned")
    def _pinned_to_graph(self, change: dict) -> None:
        self.graph.pinned = list(change["new"])

    @traitlets.observe("supernodes")
    def _supernodes_to_graph(self, change: dict) -> None:
        self.graph.supernodes = [list(s) for s in change["new"]]

    # -- pruning -----------------------------------------------------------------------------------
    def pruned(self, node_threshold: float | None = None, edge_threshold: float | None = None) -> PrunedGraph:
        """The graph pruned at the given (default: the current) thresholds (cached)."""
        key = (_threshold("node_threshold", self.node_threshold if node_threshold is None else node_threshold),
               _threshold("edge_threshold", self.edge_threshold if edge_threshold is None else edge_threshold))
        with self._lock_prune:
            if key in self._pruned:
                self._pruned.move_to_end(key)
                return self._pruned[key]
        pg = self.graph.prune(*key)
        with self._lock_prune:
            self._pruned[key] = pg
            while len(self._pruned) > _CACHE:
                self._pruned.popitem(last=False)
        return pg

    def payload(self, node_threshold: float | None = None, edge_threshold: float | None = None) -> dict[str, Any]:
        """The view's payload at some thresholds (see `graph_payload`), cached per thresholds."""
        pg = self.pruned(node_threshold, edge_threshold)
        key = (pg.node_threshold, pg.edge_threshold)
        with self._lock_prune:
            hit = self._payloads.get(key)
        if hit is None:
            hit = graph_payload(self.graph, pg, self.max_edges, self._cols)
            with self._lock_prune:
                self._payloads[key] = hit
                while len(self._payloads) > _CACHE:
                    self._payloads.popitem(last=False)
        return hit

    def prune(self, node_threshold: float | None = None, edge_threshold: float | None = None) -> PrunedGraph:
        """Set the thresholds from Python (the view reloads); returns the `PrunedGraph` shown."""
        pg = self.pruned(node_threshold, edge_threshold)
        with self.hold_sync():
            self.node_threshold, self.edge_threshold = pg.node_threshold, pg.edge_threshold
            self.version += 1
        return pg

    def _static(self) -> dict[str, Any]:
        g = self.graph
        return {"title": self.title, "prompt": g.prompt, "n_layers": g.n_layers, "n_pos": g.n_pos,
                "tokens": list(g.tokens), "token_ids": list(g.token_ids), "logit_tokens": list(g.logit_tokens),
                "logit_ids": list(g.logit_ids), "logit_probs": g.logit_probs.numpy().astype(np.float32),
                "actions": self._actions()}

    def _actions(self) -> dict[str, bool]:
        run = self.graph.model is not None and self.graph.transcoders is not None
        return {"intervene": run, "generate": run, "dashboard": self.dictionary_for is not None and self.graph.model is not None,
                "exemplars": self.store is not None, "propose": True}

    # -- pins and supernodes ---------------------------------------------------------------------------
    def pin(self, *ids: str) -> list[str]:
        """Pin nodes (ids); returns the pins."""
        with self._lock_state:
            self.pinned = sorted({*self.pinned, *self._valid_ids(ids, "pin")})
            return list(self.pinned)

    def unpin(self, *ids: str) -> list[str]:
        with self._lock_state:
            drop = set(self._valid_ids(ids, "unpin"))
            self.pinned = [p for p in self.pinned if p not in drop]
            return list(self.pinned)

    def group(self, label: str, ids: Iterable[str]) -> list[list[str]]:
        """Group nodes into a supernode ``[label, *ids]``; a node belongs to one supernode at most
        (it leaves its old one), and a supernode with the same label is replaced."""
        name = str(label).strip()
        members = self._valid_ids(ids, "group")
        if not name:
            raise ValueError("a supernode needs a label: type one")
        if not members:
            raise ValueError("a supernode needs at least one node: select some")
        with self._lock_state:
            taken = set(members)
            out = []
            for sn in self.supernodes:
                if sn[0] == name:
                    continue
                rest = [x for x in sn[1:] if x not in taken]
                if rest:
                    out.append([sn[0], *rest])
            out.append([name, *members])
            self.supernodes = out
            return [list(s) for s in self.supernodes]

    def ungroup(self, label: str) -> list[list[str]]:
        with self._lock_state:
            if not any(sn[0] == label for sn in self.supernodes):
                raise KeyError(f"no supernode labelled {label!r}; there are {[sn[0] for sn in self.supernodes]}")
            self.supernodes = [sn for sn in self.supernodes if sn[0] != label]
            return [list(s) for s in self.supernodes]

    def propose(self, nodes: Iterable[str] | None = None, threshold: float = 0.6) -> list[list[str]]:
        """Group the proposals of `workbench.graphs.propose_supernodes` (default: over the shown features)."""
        if nodes is None:
            pg = self.pruned()
            nodes = [i for i in pg.node_ids if self.graph.kind(self.graph.index(i)) == "feature"]
        groups = propose_supernodes(self.graph, list(nodes), threshold=float(threshold))
        for sn in groups:
            if len(sn) >= 2:
                self.group(str(sn[0]), [str(x) for x in sn[1:]])
        return [list(s) for s in groups]

    # -- editing the real model ----------------------------------------------------------------------
    def _edit(self, nodes: Any, op: str, factor: Any) -> dict[str, float]:
        if op not in EDIT_OPS:
            raise ValueError(f"an edit zeroes or scales the nodes: op is 'zero' or 'scale', not {op!r}")
        k = 0.0 if op == "zero" else finite_float("the scale factor", self.factor if factor is None else factor)
        ids = self._valid_ids(self.selected if nodes is None else nodes, "edit")
        if not ids:
            raise ValueError("select the nodes to edit first (click them)")
        bad = [i for i in ids if self.graph.kind(self.graph.index(i)) not in ("feature", "error")]
        if bad:
            raise ValueError(f"only features and error nodes can be edited; {bad[0]} is a "
                             f"{self.graph.kind(self.graph.index(bad[0]))} node (unselect it)")
        return {i: k for i in ids}

    def intervene(self, nodes: Iterable[str] | None = None, op: str = "zero", factor: float | None = None) -> Any:
        """Edit the nodes (default: the selected) on the real model; the `Intervention` (also kept as
        ``last_intervention``)."""
        edit = self._edit(None if nodes is None else list(nodes), op, factor)
        res = self.graph.intervene(edit, top_k=self.top_k)
        self.last_intervention = res
        return res

    def export(self, path: str | Path | None = None) -> Path:
        """Write the attribution-graph JSON at the current thresholds (pins and supernodes included)."""
        p = Path(path or self.path or f"{_slug(self.graph.prompt)}.graph.json").expanduser()
        self.graph.pinned = list(self.pinned)
        self.graph.supernodes = [list(s) for s in self.supernodes]
        self.graph.export(p, node_threshold=self.node_threshold, edge_threshold=self.edge_threshold)
        self.last_export = str(p.resolve())
        return p

    # -- exemplars and dashboards ----------------------------------------------------------------------
    def _dictionary(self, layer: int) -> Any:
        d = self.dictionary_for
        return d.dictionary(layer) if callable(getattr(d, "dictionary", None)) else d(layer)

    def _store_key(self, layer: int) -> str | None:
        """The scan store's key of a layer's features: ``store_keys``, else the one feature scan at
        that layer's input site (width matching the layer's transcoder when known)."""
        sk = self.store_keys
        if sk is not None:
            key = sk(layer) if callable(sk) else sk.get(layer)
            return None if key is None else str(key)
        from workbench.core.sites import Site

        width = None
        tset = self.graph.transcoders
        if tset is not None and layer in getattr(tset, "layers", []):
            width = int(tset.d_sae(layer))
        cands = []
        for key, info in self.store.meta["sites"].items():
            if info.get("transform") is None:
                continue
            try:
                site = Site.parse(info.get("site", key))
            except (ValueError, TypeError):
                continue
            if site.layer == layer and (width is None or int(info.get("width") or -1) == width):
                cands.append(key)
        return cands[0] if len(cands) == 1 else None

    def exemplars(self, node: str) -> list[dict[str, Any]]:
        """A feature's top exemplar windows from the scan store: value, position, tokens (no rerun)."""
        info = self.graph.node(node)
        if self.store is None or info["kind"] != "feature":
            return []
        key = self._store_key(info["layer"])
        if key is None:
            return []
        tok = getattr(self.graph.model, "tokenizer", None) or getattr(self.store.model, "tokenizer", None)
        if tok is None:
            return []
        out = []
        for v, w, p in self.store.top(key, int(info["feature"]))[: self.n_exemplars]:
            out.append({"value": json_float(v), "position": int(p),
                        "tokens": [tok.decode([i]) for i in self.store.window_tokens(w)]})
        return out

    def open_dashboard(self, node: str, **kwargs: Any) -> Any:
        """Open a feature's `FeatureDashboard` below the graph (needs ``dictionary_for`` and the model)."""
        from .features import FeatureDashboard

        info = self.graph.node(node)
        if info["kind"] != "feature":
            raise ValueError(f"{info['id']} is a {info['kind']} node: only features have a dashboard")
        if self.dictionary_for is None or self.graph.model is None:
            raise ValueError("opening a feature's dashboard needs dictionary_for= (a TranscoderSet or layer -> "
                             "Dictionary) and a graph with its model attached")
        d = self._dictionary(info["layer"])
        kwargs.setdefault("text", self.graph.prompt)
        try:
            view = FeatureDashboard(self.graph.model, d, int(info["feature"]), self.store, **kwargs)
        except (ValueError, KeyError):  # the store has no scan of this dictionary: the dashboard without exemplars
            if self.store is None:
                raise
            view = FeatureDashboard(self.graph.model, d, int(info["feature"]), None, **kwargs)
        self.detail.children = (view,)
        return view

    # -- rpc ------------------------------------------------------------------------------------------
    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The view's first ``graph``."""
        return [("graph", {})]

    @rpc()
    def rpc_graph(self) -> dict[str, Any]:
        """The view's first load: the prompt, tokens and logits, and the graph at the current thresholds."""
        return {**self._static(), **self.payload()}

    @rpc(background=True)
    def rpc_prune(self, node_threshold: Any, edge_threshold: Any, job: Job | None = None) -> dict[str, Any]:
        """Re-prune at new thresholds (sets them); a newer slider position supersedes this one."""
        nt, et = _threshold("node_threshold", node_threshold), _threshold("edge_threshold", edge_threshold)
        if job is not None:
            job.check()
        out = self.payload(nt, et)
        if job is not None:
            job.check()
        with self.hold_sync():
            self.node_threshold, self.edge_threshold = nt, et
        return out

    @rpc()
    def rpc_pin(self, ids: list[str], on: bool | None = None) -> dict[str, Any]:
        """Pin (``on`` True), unpin (False) or toggle (None) nodes."""
        ids = self._valid_ids(ids, "pin")
        with self._lock_state:
            cur = set(self.pinned)
            for i in ids:
                if on is True or (on is None and i not in cur):
                    cur.add(i)
                else:
                    cur.discard(i)
            self.pinned = sorted(cur)
        return {"pinned": list(self.pinned)}

    @rpc()
    def rpc_select(self, ids: list[str]) -> dict[str, Any]:
        self.selected = self._valid_ids(ids, "selected")
        return {"selected": list(self.selected)}

    @rpc()
    def rpc_group(self, label: str, ids: list[str]) -> dict[str, Any]:
        return {"supernodes": self.group(label, ids)}

    @rpc()
    def rpc_ungroup(self, label: str) -> dict[str, Any]:
        return {"supernodes": self.ungroup(label)}

    @rpc(background=True)
    def rpc_propose(self, threshold: Any = 0.6, job: Job | None = None) -> dict[str, Any]:
        groups = self.propose(threshold=finite_float("the threshold", threshold))
        return {"proposed": groups, "supernodes": [list(s) for s in self.supernodes]}

    @rpc()
    def rpc_node(self, node: str, open: bool = True) -> dict[str, Any]:
        """A clicked node: its facts; a feature opens its dashboard below when it can (in the message
        handler's thread: the new widget's comm opens there)."""
        info = self.graph.node(node)
        out = {k: (json_float(v) if isinstance(v, float) else v) for k, v in info.items()}
        if open and info["kind"] == "feature" and self._actions()["dashboard"]:
            self.open_dashboard(info["id"])
            out["opened"] = "dashboard"
        return out

    @rpc(background=True)
    def rpc_hover(self, node: str, job: Job | None = None) -> dict[str, Any]:
        """A hovered node: its label and (features, with a store) its top exemplars."""
        info = self.graph.node(node)
        return {"id": info["id"], "label": info["label"], "exemplars": self.exemplars(info["id"])}

    @rpc(background=True)
    def rpc_intervene(self, nodes: list[str] | None = None, op: str = "zero", factor: Any = None,
                      job: Job | None = None) -> dict[str, Any]:
        """Edit the nodes on the real model: top next tokens before / after, and each logit node's
        measured change beside the graph's prediction."""
        edit = self._edit(nodes, op, factor)
        if job is not None:
            job.check()
        res = self.graph.intervene(edit, top_k=self.top_k)
        if job is not None:
            job.check()
        self.last_intervention = res
        return {"nodes": res.nodes, "op": op, "factor": next(iter(edit.values())),
                "before": [[t, float(p)] for t, p in res.before], "after": [[t, float(p)] for t, p in res.after],
                "logit_tokens": list(res.logit_tokens),
                "measured": np.asarray(res.measured, np.float32), "predicted": np.asarray(res.predicted, np.float32)}

    @rpc(background=True)
    def rpc_generate(self, nodes: list[str] | None = None, op: str = "zero", factor: Any = None,
                     max_new_tokens: Any = None, job: Job | None = None) -> Generator[dict, None, dict]:
        """Stream a generation from the prompt with the edit (``{"text": so far}`` partials)."""
        edit = self._edit(nodes, op, factor)
        n = self.max_new_tokens if max_new_tokens is None else as_int("max_new_tokens", max_new_tokens)
        if not 1 <= n <= 1000:
            raise ValueError(f"max_new_tokens must be between 1 and 1000, not {n}")
        specs = node_edits(self.graph, edit)
        text: str = yield from keyed("text", generation(self.graph.model, self.graph.prompt, specs, n, job,
                                                        "attribution-generate"))
        self.generated = text
        return {"text": text, "nodes": edit, "prompt": self.graph.prompt}

    @rpc()
    def rpc_export(self, path: str | None = None) -> dict[str, Any]:
        """Write the JSON export (``path``, else the ``path`` trait, else a name from the prompt)."""
        p = self.export(path or None)
        d = p.stat().st_size
        return {"path": self.last_export, "bytes": int(d), "pinned": len(self.pinned), "supernodes": len(self.supernodes)}

    # -- display: the graph with its dashboard box below -----------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return ipywidgets.VBox([self, self.detail])._repr_mimebundle_(**kwargs)


def _slug(prompt: str) -> str:
    words = "".join(c.lower() if c.isalnum() else "-" for c in prompt).split("-")
    return "-".join(w for w in words if w)[:48] or "graph"
