"""CircuitGraph: a computation graph of heads and MLPs (or any layered graph) with live faithfulness.

    from workbench.circuits import eap
    from workbench.widgets import CircuitGraph
    scores = eap(model, task)                 # EdgeScores
    w = CircuitGraph(model, scores)           # or scores.show(model=model)
    w.k = 200                                 # the slider: number of kept edges (top by |score|)
    w.circuit                                 # the pinned edges as a Circuit; w.save(path) / w.load(path)

In the browser: nodes sit in columns by layer (embeddings, then each layer's heads with their
key/value (or q/k/v) inputs below them, its MLP, then the logits) and rows by head index; an
edge's colour is the sign of its score (blue positive, red negative) and its width the magnitude.
The kernel sends the top ``max_edges`` edges by |score| as binary buffers (uint16/int32 node
indices, int32 edge ids, float32 scores); only the ``k`` kept edges are drawn (at most
``max_draw``). Moving the slider (log scale) asks the kernel for the faithfulness of the top-``k``
circuit, the value `workbench.circuits.faithfulness` gives (1 = the full model, 0 = fully
corrupted), at the cost of one patched run per position (the baselines are recorded once per
view); a newer position cancels an older one. Clicking an edge runs its exact patch
(`workbench.circuits.patch_edges`, that edge alone patched to its corrupted value) beside the
score's estimate. Clicking a head opens an `AttentionHeads` view of its pattern on the task's
first clean prompt, below the graph; clicking an MLP lists its top neurons for the task (see
`CircuitGraph.top_neurons`). Pinned edges and nodes sync to Python (``pinned_edges``,
``pinned_nodes``, ``circuit``). The view exports SVG (also kept as ``w.svg``) and PNG;
``w.save_image(path)`` saves either. Node labels and ids are always set as text, never as HTML.

The payload is generic: `CircuitGraph.from_graph` draws any layered graph (a feature
attribution graph: nodes with id, label, layer, kind and index within the layer; edges with
src, dst and weight) without a model.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets
import numpy as np
import torch
import traitlets

from ._base import Job, WorkbenchWidget, bundle, rpc
from ._payload import as_int, json_float

__all__ = ["CircuitGraph", "GraphData", "graph_data"]

_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")


#: public names the facade does not export (yet), by their defining module
_MODULES = {"task_baselines": "patching", "normalize": "evaluation"}


def _engine(name: str) -> Any:
    """A public name of `workbench.circuits` (looked up at call time, through its facade)."""
    import importlib

    import workbench.circuits as circuits

    try:
        return getattr(circuits, name)
    except AttributeError:
        if name not in _MODULES:
            raise
        return getattr(importlib.import_module(f"workbench.circuits.{_MODULES[name]}"), name)


_MLP = re.compile(r"^m(\d+)$")
_CACHE = 256


def _np(x: Any, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        x = x.numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


@dataclass
class GraphData:
    """A layered graph as the view draws it: node columns (one entry per node) and edge columns."""

    ids: list[str]
    labels: list[str]
    kinds: list[str]
    layer: np.ndarray  # [n] int32: the model layer (embed -1, logits n_layers)
    index: np.ndarray  # [n] int32: position within the layer (head index)
    src: np.ndarray  # [e] int32 node indices
    dst: np.ndarray  # [e] int32
    weight: np.ndarray  # [e] float32
    value: np.ndarray | None = None  # [n] float32 node scores (optional)

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.layer, self.index = _np(self.layer, np.int32), _np(self.index, np.int32)
        self.src, self.dst, self.weight = _np(self.src, np.int32), _np(self.dst, np.int32), _np(self.weight, np.float32)
        if self.value is not None:
            self.value = _np(self.value, np.float32)
        for name, col in (("labels", self.labels), ("kinds", self.kinds), ("layer", self.layer), ("index", self.index)):
            if len(col) != n:
                raise ValueError(f"the graph has {n} nodes but {len(col)} {name}")
        if self.value is not None and len(self.value) != n:
            raise ValueError(f"the graph has {n} nodes but {len(self.value)} node values")
        if not (len(self.src) == len(self.dst) == len(self.weight)):
            raise ValueError(f"edges need as many src, dst and weights: {len(self.src)}, {len(self.dst)}, {len(self.weight)}")
        if len(set(self.ids)) != n:
            raise ValueError("node ids must be unique")
        for name, col in (("src", self.src), ("dst", self.dst)):
            if col.size and (col.min() < 0 or col.max() >= n):
                raise IndexError(f"an edge's {name} is not a node index in 0..{n - 1}")
        if self.weight.size and not np.isfinite(self.weight).all():
            raise ValueError("edge weights must be finite (got NaN or infinity)")

    def edge_name(self, e: int) -> str:
        return f"{self.ids[int(self.src[e])]}->{self.ids[int(self.dst[e])]}"

    def order(self) -> np.ndarray:
        """Edge indices sorted by |weight|, largest first (stable, so ties keep the graph's order)."""
        return np.argsort(-np.abs(self.weight), kind="stable").astype(np.int64)


def _edge_index(graph: Any) -> tuple[Any, Any]:
    """(src, dst) of a `ComputationGraph`: ``graph.edges`` as a (src, dst) pair or a [2, e] / [e, 2] tensor."""
    for a, b in (("src", "dst"), ("edge_src", "edge_dst")):
        if hasattr(graph, a) and hasattr(graph, b):
            return getattr(graph, a), getattr(graph, b)
    edges = graph.edges
    if isinstance(edges, (tuple, list)) and len(edges) == 2:
        return edges[0], edges[1]
    t = torch.as_tensor(edges)
    if t.ndim == 2 and t.shape[0] == 2:
        return t[0], t[1]
    if t.ndim == 2 and t.shape[1] == 2:
        return t[:, 0], t[:, 1]
    raise TypeError(f"cannot read the edges of {type(graph).__name__}: expected (src, dst) index tensors")


def _node_rows(names: list[str], kinds: list[str], heads: list[int] | None, n_heads: int,
               n_kv: int) -> tuple[list[str], list[int]]:
    """(label, row within the layer's column) of component nodes: heads by head index, then the
    receiver-only nodes of a layer's attention (queries, keys/values) below its heads."""
    labels, rows = [], []
    for i, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        h = heads[i] if heads is not None else -1
        m = _HEAD.match(name)
        if m and h < 0:
            h = int(m.group(2))
        if kind in ("head", "attn"):
            labels.append(f"layer {name[1:].split('.')[0]} head {h}")
            rows.append(h)
        elif kind == "q":
            labels.append(f"query input of {name.rsplit('.', 1)[0]}")
            rows.append(n_heads + h)
        elif kind in ("kv", "k", "v"):
            labels.append({"kv": "key/value input", "k": "key input", "v": "value input"}[kind])
            base = n_heads * (2 if any(k == "q" for k in kinds) else 1)
            rows.append(base + (n_kv if kind == "v" else 0) + h)
        elif kind == "mlp":
            labels.append(f"layer {name[1:]} MLP")
            rows.append(0)
        else:
            labels.append(name)
            rows.append(0)
    return labels, rows


def graph_data(scores: Any) -> GraphData:
    """The drawable graph of an `EdgeScores` (its `ComputationGraph`, scores and node scores)."""
    g = scores.graph
    names = [str(n) for n in g.nodes]
    layers = [int(x) for x in _np(g.node_layer, np.int64)]
    kinds = [str(k) for k in g.node_kind]
    heads = [int(h) for h in g.node_head] if getattr(g, "node_head", None) is not None else None
    n_heads = int(getattr(g, "n_heads", 0) or 1 + max([int(_HEAD.match(n).group(2)) for n in names if _HEAD.match(n)] or [0]))
    n_kv = int(getattr(g, "n_kv_heads", 0) or n_heads)
    labels, rows = _node_rows(names, kinds, heads, n_heads, n_kv)
    src, dst = _edge_index(g)
    value = None
    node_scores = getattr(scores, "node_scores", None)
    if callable(node_scores):
        value = node_scores()
        if isinstance(value, dict):  # name -> score
            value = [float(value.get(n, 0.0)) for n in names]
    return GraphData(ids=names, labels=labels, kinds=kinds, layer=layers, index=rows, src=src, dst=dst,
                     weight=scores.scores, value=value)


class CircuitGraph(WorkbenchWidget):
    """The circuit graph view of `EdgeScores` (or any `GraphData`), with live faithfulness and drill-down.

    ``k``: edges kept (the slider); ``pinned_edges`` / ``pinned_nodes``: names the user pinned;
    ``circuit``: the pinned edges as a `workbench.circuits.Circuit`; ``last_faithfulness``: the
    value shown; ``detail``: the box below the graph where a clicked head's pattern opens.
    """

    _esm = bundle("circuit")

    title = traitlets.Unicode("").tag(sync=True)
    k = traitlets.Int(0).tag(sync=True)
    pinned_edges = traitlets.List(traitlets.Unicode(), []).tag(sync=True)
    pinned_nodes = traitlets.List(traitlets.Unicode(), []).tag(sync=True)
    version = traitlets.Int(0).tag(sync=True)  # bumped when the graph changes: the view reloads
    last_faithfulness = traitlets.Float(None, allow_none=True).tag(sync=True)

    def __init__(self, model: Any = None, scores: Any = None, task: Any = None, *, graph: GraphData | None = None,
                 k: int | None = None, max_edges: int = 5000, max_draw: int = 3000, title: str | None = None,
                 n_neuron_pairs: int = 4, top_neurons: int = 10, prompt: str | None = None, **kwargs: Any) -> None:
        if graph is None and scores is None:
            raise ValueError("CircuitGraph needs EdgeScores (CircuitGraph(model, scores)) or a graph "
                             "(CircuitGraph.from_graph(nodes, edges))")
        self.lm = model
        self.scores = scores
        self.task = task if task is not None else getattr(scores, "task", None)
        self.data = graph if graph is not None else graph_data(scores)
        self.max_edges = as_int("max_edges", max_edges)
        self.max_draw = as_int("max_draw", max_draw)
        if self.max_edges < 1 or self.max_draw < 1:
            raise ValueError("max_edges and max_draw must be at least 1")
        self.n_neuron_pairs, self.n_top_neurons = as_int("n_neuron_pairs", n_neuron_pairs), as_int("top_neurons", top_neurons)
        self._order = self.data.order()
        self._names = {self.data.edge_name(e): e for e in range(len(self.data.weight))}
        n = len(self._order)
        k0 = min(n, 50) if k is None else as_int("k", k)
        if not 0 <= k0 <= n:
            raise ValueError(f"k must be between 0 and {n} (the graph's edges), not {k0}")
        self._faith: OrderedDict[int, float] = OrderedDict()
        self._exact: dict[int, dict[str, Any]] = {}
        self._neurons: dict[int, dict[str, Any]] = {}
        self._lock_cache = threading.Lock()
        self._base: tuple[float, float, torch.Tensor] | None = None
        self._lock_faith = threading.Lock()  # one faithfulness run at a time; superseded ones never start
        self._prompt_text = prompt  # where a clicked head's pattern opens (default: the task's first prompt)
        self.svg = ""  # the last SVG the view exported
        self.detail = ipywidgets.VBox([])  # a clicked head's AttentionHeads opens here
        if title is None:
            method = getattr(scores, "method", "") or ""
            tname = getattr(self.task, "name", "") or ""
            title = " · ".join(x for x in (f"{method} edge scores" if method else "circuit graph", tname) if x)
        super().__init__(k=k0, title=title, **kwargs)

    @classmethod
    def from_scores(cls, scores: Any, model: Any = None, **kwargs: Any) -> CircuitGraph:
        """The viewer of ``scores.show(model=model)`` (``model`` may come from the scores)."""
        model = model if model is not None else getattr(scores, "model", None)
        return cls(model, scores, **kwargs)

    @classmethod
    def from_graph(cls, nodes: Sequence[dict[str, Any]], edges: Any, *, values: Any = None, **kwargs: Any) -> CircuitGraph:
        """Any layered graph (feature attribution graphs too), drawn without a model.

        ``nodes``: dicts with ``id``, ``layer`` and optional ``label``, ``kind`` (default ``"feature"``)
        and ``index`` (row within the layer; default: order of appearance in the layer).
        ``edges``: ``(src_id, dst_id, weight)`` triples, or a dict of ``src``/``dst`` node-index arrays
        and ``weight``. Slider, pins and export work; faithfulness and drill-down need a model and task.
        """
        ids = [str(n["id"]) for n in nodes]
        pos = {v: i for i, v in enumerate(ids)}
        seen: dict[int, int] = {}
        index = []
        for n in nodes:
            L = int(n["layer"])
            index.append(int(n["index"]) if "index" in n else seen.get(L, 0))
            seen[L] = seen.get(L, 0) + 1
        if isinstance(edges, dict):
            src, dst, w = edges["src"], edges["dst"], edges["weight"]
        else:
            triples = list(edges)
            try:
                src = [pos[str(a)] for a, _, _ in triples]
                dst = [pos[str(b)] for _, b, _ in triples]
            except KeyError as e:
                raise KeyError(f"an edge names node {e.args[0]!r}, which is not in the nodes") from None
            w = [float(x) for _, _, x in triples]
        data = GraphData(ids=ids, labels=[str(n.get("label", n["id"])) for n in nodes],
                         kinds=[str(n.get("kind", "feature")) for n in nodes], layer=[int(n["layer"]) for n in nodes],
                         index=index, src=src, dst=dst, weight=w, value=values)
        return cls(None, None, None, graph=data, **kwargs)

    @classmethod
    def from_head_scores(cls, scores: Any, kind: str = "induction", model: Any = None, prompt: str | None = None,
                         **kwargs: Any) -> CircuitGraph:
        """`HeadScores` as a layer × head grid of nodes coloured by one score (``kind``), no edges.

        Clicking a head opens its attention pattern on ``prompt`` (default: a repeated random
        sequence like those the scores were measured on, decoded to text and so re-tokenized).
        """
        values = scores.scores(kind).float()
        n_layers, n_heads = int(values.shape[0]), int(values.shape[1])
        model = model if model is not None else getattr(scores, "model", None)
        if prompt is None and model is not None:
            from workbench.circuits.heads import repeated_sequences  # not in the facade yet

            ids = repeated_sequences(model, 1, min(int(scores.seq_len), 24), seed=int(scores.seed), prepend_bos=False)
            prompt = model.tokenizer.decode(torch.as_tensor(ids)[0].tolist())
        ids_ = [f"a{L}.h{H}" for L in range(n_layers) for H in range(n_heads)]
        data = GraphData(ids=ids_, labels=[f"layer {L} head {H}" for L in range(n_layers) for H in range(n_heads)],
                         kinds=["head"] * len(ids_), layer=[L for L in range(n_layers) for _ in range(n_heads)],
                         index=[H for _ in range(n_layers) for H in range(n_heads)],
                         src=np.zeros(0, np.int32), dst=np.zeros(0, np.int32), weight=np.zeros(0, np.float32),
                         value=values.flatten())
        kwargs.setdefault("title", f"{kind.replace('_', ' ')} score per head ({scores.model_name or 'model'})")
        return cls(model, None, None, graph=data, prompt=prompt, **kwargs)

    def set_scores(self, scores: Any, task: Any = None) -> None:
        """Show other scores of the same graph (say EAP-IG after EAP): the view reloads, pins stay."""
        data = graph_data(scores)
        if data.ids != self.data.ids or not (np.array_equal(data.src, self.data.src)
                                             and np.array_equal(data.dst, self.data.dst)):
            raise ValueError("these scores are for another graph: make a new CircuitGraph for them")
        self.scores, self.data = scores, data
        new_task = task if task is not None else getattr(scores, "task", None) or self.task
        if new_task is not self.task:
            self._base = None
        self.task = new_task
        self._order = data.order()
        with self._lock_cache:
            self._faith.clear()
        self._exact.clear()
        self._neurons.clear()
        self.last_faithfulness = None
        self.title = " · ".join(x for x in (f"{getattr(scores, 'method', '')} edge scores",
                                            getattr(self.task, "name", "") or "") if x)
        self.version += 1

    # -- what the view can ask for --------------------------------------------------------------
    @property
    def can_run(self) -> bool:
        return self.lm is not None and self.task is not None and self.scores is not None

    def _actions(self) -> dict[str, bool]:
        run = self.can_run
        return {"faithfulness": run, "exact": run, "heads": self.lm is not None and self._prompt() is not None,
                "neurons": run}

    def _need_run(self, what: str) -> None:
        if not self.can_run:
            raise ValueError(f"{what} needs the model, the task and the edge scores: CircuitGraph(model, scores) "
                             "with scores that carry their task (or task=...)")

    # -- circuits --------------------------------------------------------------------------------
    def top_edges(self, k: int) -> list[str]:
        """Names of the ``k`` edges with the largest |score| (the slider's circuit)."""
        k = as_int("k", k)
        if not 0 <= k <= len(self._order):
            raise ValueError(f"k must be between 0 and {len(self._order)} (the graph's edges), not {k}")
        return [self.data.edge_name(int(e)) for e in self._order[:k]]

    def _circuit_cls(self) -> Any:
        return _engine("Circuit")

    def _make_circuit(self, edges: Iterable[str], **meta: Any) -> Any:
        return self._circuit_cls().from_edges(self.scores.graph, list(edges), **meta)

    def top_circuit(self, k: int) -> Any:
        """The slider's circuit: the top-``k`` edges by |score|, as a `Circuit`."""
        return self._make_circuit(self.top_edges(k))

    @property
    def circuit(self) -> Any:
        """The pinned edges as a `workbench.circuits.Circuit`; pinned nodes travel in its
        ``meta["pinned_nodes"]``. Set it (or `load` one) to pin a circuit's edges and nodes."""
        self._need_graph()
        meta = {"pinned_nodes": list(self.pinned_nodes), "source": "CircuitGraph pins",
                "method": str(getattr(self.scores, "method", "") or ""),
                "task": str(getattr(self.task, "name", "") or "")}
        return self._make_circuit(sorted(self.pinned_edges), **meta)

    @circuit.setter
    def circuit(self, c: Any) -> None:
        self._need_graph()
        mine, theirs = getattr(self.scores.graph, "config", None), getattr(c, "graph_config", None)
        if mine is not None and theirs is not None and (
                {k: v for k, v in mine.items() if k != "model"} != {k: v for k, v in theirs.items() if k != "model"}
                or (mine.get("model") and theirs.get("model") and mine["model"] != theirs["model"])):
            raise ValueError(f"this circuit belongs to another graph ({theirs.get('model', '?')}: {theirs}); "
                             f"this view shows {mine.get('model', '?')}: {mine}")
        names = [str(e) for e in _circuit_edge_names(c)]
        bad = [e for e in names if e not in self._names]
        if bad:
            raise KeyError(f"the circuit has {len(bad)} edge(s) not in this graph, e.g. {bad[0]!r}")
        nodes = [str(n) for n in (getattr(c, "meta", None) or {}).get("pinned_nodes", [])]
        self.pinned_edges = sorted(names)
        self.pinned_nodes = [n for n in nodes if n in set(self.data.ids)]

    def _need_graph(self) -> None:
        if self.scores is None:
            raise ValueError("a Circuit needs a component graph (CircuitGraph(model, scores)); "
                             "this view was built from a plain graph: read pinned_edges instead")

    def save(self, path: str | Path) -> Path:
        """Save the pinned circuit as JSON (`Circuit.save`)."""
        c = self.circuit
        c.save(path)
        return Path(path)

    def load(self, path: str | Path) -> Any:
        """Load a circuit saved as JSON and pin its edges; returns the `Circuit`."""
        self._need_graph()
        cls = self._circuit_cls()
        try:
            c = cls.load(path, model=self.lm) if self.lm is not None else cls.load(path)
        except TypeError:  # a Circuit whose load takes no model
            c = cls.load(path)
        self.circuit = c
        return c

    @traitlets.validate("pinned_edges")
    def _valid_edges(self, proposal: dict) -> list[str]:
        value = [str(v) for v in proposal["value"]]
        bad = [v for v in value if v not in self._names]
        if bad:
            raise traitlets.TraitError(f"edge {bad[0]!r} is not in this graph (edges are named like "
                                       f"{next(iter(self._names), 'a0.h0->m1')!r})")
        return sorted(set(value))

    @traitlets.validate("pinned_nodes")
    def _valid_nodes(self, proposal: dict) -> list[str]:
        value = [str(v) for v in proposal["value"]]
        ids = set(self.data.ids)
        bad = [v for v in value if v not in ids]
        if bad:
            raise traitlets.TraitError(f"node {bad[0]!r} is not in this graph")
        return sorted(set(value))

    @traitlets.validate("k")
    def _valid_k(self, proposal: dict) -> int:
        k = int(proposal["value"])
        n = len(self._order)
        if not 0 <= k <= n:
            raise traitlets.TraitError(f"k must be between 0 and {n} (the graph's edges), not {k}")
        return k

    # -- kernel work ------------------------------------------------------------------------------
    def faithfulness(self, k: int, cancel: threading.Event | None = None) -> float:
        """Faithfulness of the top-``k`` circuit (cached per k): what `workbench.circuits.faithfulness`
        gives for ``top_circuit(k)``, computed from its own parts so that a slider move costs one
        patched run: the clean and corrupted baselines (`task_baselines`, recorded once per view
        and kept, the corrupted sender outputs included) and `patch_edges` on the edges outside the
        circuit, normalized with `normalize`. ``cancel`` stops a superseded run."""
        self._need_run("faithfulness")
        k = as_int("k", k)
        n = len(self._order)
        if not 0 <= k <= n:
            raise ValueError(f"k must be between 0 and {n} (the graph's edges), not {k}")
        with self._lock_cache:
            if k in self._faith:
                self._faith.move_to_end(k)
                return self._faith[k]
        m_clean, m_corr, source = self._baselines()
        normalize = _engine("normalize")
        if k == n:
            value = float(normalize(m_clean, m_clean, m_corr))  # nothing patched: the clean run
        else:
            keep = torch.zeros(n, dtype=torch.bool)
            keep[torch.as_tensor(self._order[:k])] = True
            kw: dict[str, Any] = {"graph": self.scores.graph, "source": source}
            if cancel is not None:
                kw["cancel"] = cancel
            m = _engine("patch_edges")(self.lm, self.task, (~keep)[None], **kw)[0]
            value = float(normalize(float(m), m_clean, m_corr))
        with self._lock_cache:
            self._faith[k] = value
            while len(self._faith) > _CACHE:
                self._faith.popitem(last=False)
        return value

    def _baselines(self) -> tuple[float, float, torch.Tensor]:
        """(clean mean metric, corrupted mean metric, corrupted sender outputs), once per view."""
        if self._base is None:
            self.scores.graph.check_model(self.lm)
            self._base = _engine("task_baselines")(self.lm, self.task, self.scores.graph)
        return self._base

    def close(self) -> None:
        """Close the view and free the recorded corrupted activations."""
        self._base = None
        super().close()

    def exact_edge(self, eid: int, cancel: threading.Event | None = None) -> dict[str, Any]:
        """One edge's exact patch beside its estimated effect.

        ``exact`` = metric with that edge alone patched to its corrupted value (`patch_edges`) −
        the clean run's metric (`task_baselines`), means over the task's pairs; ``estimated`` is
        the edge's score (the method's estimate of the same difference).
        """
        self._need_run("exact patching")
        eid = as_int("eid", eid)
        if not 0 <= eid < len(self.data.weight):
            raise IndexError(f"edge {eid} is out of range: the graph has {len(self.data.weight)} edges")
        if eid in self._exact:
            return self._exact[eid]
        name = self.data.edge_name(eid)
        clean, _, source = self._baselines()
        kw: dict[str, Any] = {"graph": self.scores.graph, "source": source}
        if cancel is not None:
            kw["cancel"] = cancel
        patched = float(torch.as_tensor(_engine("patch_edges")(self.lm, self.task, [[name]], **kw)).double().mean())
        corrupted = json_float(getattr(self.scores, "corrupted_metric", None))
        out = {"eid": eid, "name": name, "estimated": float(self.data.weight[eid]),
               "exact": patched - clean, "exact_metric": patched, "clean_metric": clean,
               "corrupted_metric": corrupted, "method": str(getattr(self.scores, "method", ""))}
        self._exact[eid] = out
        return out

    def _prompt(self) -> str | None:
        """The prompt a clicked head's pattern opens on: ``prompt=``, else the task's first clean prompt."""
        if self._prompt_text is not None:
            return self._prompt_text
        t = self.task
        if t is None:
            return None
        texts = list(getattr(t, "clean", None) or [])
        if texts:
            return str(texts[0])
        if self.lm is None:
            return None
        return self.lm.tokenizer.decode(torch.as_tensor(t.clean_ids)[0].tolist())

    def _pair_texts(self, i: int) -> tuple[str, str]:
        t = self.task
        clean, corrupted = list(getattr(t, "clean", None) or []), list(getattr(t, "corrupted", None) or [])
        if len(clean) > i and len(corrupted) > i:
            return str(clean[i]), str(corrupted[i])
        dec = self.lm.tokenizer.decode
        return dec(torch.as_tensor(t.clean_ids)[i].tolist()), dec(torch.as_tensor(t.corrupted_ids)[i].tolist())

    def open_head(self, layer: int, head: int) -> Any:
        """Open the `AttentionHeads` view of one head on the task's first clean prompt (below the graph)."""
        from .attention import AttentionHeads

        prompt = self._prompt()
        if prompt is None or self.lm is None:
            raise ValueError("opening a head's pattern needs the model and a task with a prompt")
        layer, head = as_int("layer", layer), as_int("head", head)
        view = AttentionHeads(self.lm, prompt, layers=[layer])
        view.selected = [layer, head]
        self.detail.children = (view,)
        return view

    def top_neurons(self, layer: int, n: int | None = None, cancel: threading.Event | None = None) -> dict[str, Any]:
        """The MLP's neurons with the largest estimated effect on the task's metric.

        Per neuron: attribution patching (`workbench.causal.patching.attribution_patching`,
        ``site="neurons"``, ``direction="noising"``), i.e. gradient of the metric at the clean
        run × (corrupted − clean) activation, summed over positions: the first-order estimate of
        how much the metric changes when that neuron alone takes its corrupted value (the same
        convention as an EAP edge score). Averaged over the task's first ``n_neuron_pairs``
        pairs; ranked by |effect|. It is an estimate, not an exact patch.
        """
        self._need_run("top neurons")
        layer = as_int("layer", layer)
        n = self.n_top_neurons if n is None else as_int("n", n)
        if layer in self._neurons and len(self._neurons[layer]["neurons"]) >= n:
            hit = self._neurons[layer]
            return {**hit, "neurons": hit["neurons"][:n], "values": hit["values"][:n]}
        from workbench.causal.patching import attribution_patching

        d_mlp = int(self.lm.arch.d_mlp)
        t = self.task
        pairs = min(int(t.clean_ids.shape[0]), max(1, self.n_neuron_pairs))
        total = torch.zeros(d_mlp, dtype=torch.float64)
        for i in range(pairs):
            if cancel is not None and cancel.is_set():
                from ._base import Cancelled

                raise Cancelled()
            clean, corrupted = self._pair_texts(i)
            res = attribution_patching(self.lm, clean, corrupted, answer=int(t.answer_ids[i]), wrong=int(t.wrong_ids[i]),
                                       site="neurons", layers=[layer], neurons=list(range(d_mlp)),
                                       direction="noising", progress=False)
            total += res.raw[0].double() - float(res.clean_metric)
        effect = total / pairs
        top = torch.argsort(effect.abs(), descending=True, stable=True)[:n]
        out = {"layer": layer, "neurons": top.to(torch.int32).numpy(), "values": effect[top].float().numpy(),
               "pairs": pairs,
               "how": (f"attribution patching on neurons.{layer}: gradient × (corrupted − clean) activation, the "
                       f"estimated change of the metric when the neuron alone is corrupted; mean of {pairs} pair(s)")}
        self._neurons[layer] = out
        return out

    # -- rpc ------------------------------------------------------------------------------------
    # -- static copy ---------------------------------------------------------------------
    def static_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The ``graph``, then the faithfulness of the shown ``k`` when the graph can run it."""
        reqs: list[tuple[str, dict[str, Any]]] = [("graph", {})]
        if self._actions()["faithfulness"]:
            reqs.append(("faithfulness", {"k": max(0, min(len(self._order), int(self.k)))}))
        return reqs

    @rpc()
    def rpc_graph(self) -> dict[str, Any]:
        """Nodes (text labels, int32 layer/index, float32 node scores) and the top edges by |score|."""
        d = self.data
        top = self._order[: self.max_edges]
        small = len(d.ids) <= np.iinfo(np.uint16).max

        def node_ix(x: np.ndarray) -> np.ndarray:  # 2 bytes per node index when the graph allows it
            return x.astype(np.uint16) if small else x
        metric = {"clean": json_float(getattr(self.scores, "clean_metric", None)),
                  "corrupted": json_float(getattr(self.scores, "corrupted_metric", None))}
        return {
            "title": self.title, "method": str(getattr(self.scores, "method", "") or "score"),
            "task": str(getattr(self.task, "name", "") or ""),
            "n_edges": int(len(self._order)),
            "nodes": {"ids": list(d.ids), "labels": list(d.labels), "kinds": list(d.kinds),
                      "layer": d.layer, "index": d.index, "value": d.value},
            "edges": {"eid": top.astype(np.int32), "src": node_ix(d.src[top]), "dst": node_ix(d.dst[top]),
                      "weight": d.weight[top]},
            "k": int(self.k), "max_draw": int(self.max_draw), "actions": self._actions(), "metric": metric,
        }

    @rpc(background=True)
    def rpc_faithfulness(self, k: int, job: Job | None = None) -> dict[str, Any]:
        """Faithfulness of the top-``k`` circuit (sets ``k`` and ``last_faithfulness``)."""
        k = as_int("k", k)
        n = len(self._order)
        if not 0 <= k <= n:
            raise ValueError(f"k must be between 0 and {n} (the graph's edges), not {k}")
        with self._lock_faith:
            if job is not None:
                job.check()  # a newer slider position arrived while this one waited
            value = self.faithfulness(k, cancel=job.event if job is not None else None)
        if job is not None:
            job.check()
        self.k = k
        self.last_faithfulness = json_float(value)
        thr = float(abs(self.data.weight[self._order[k - 1]])) if k >= 1 else None
        return {"k": k, "faithfulness": json_float(value), "threshold": thr, "edges": k}

    @rpc(background=True)
    def rpc_edge(self, eid: int, job: Job | None = None) -> dict[str, Any]:
        """Exact patch of one edge beside its estimate."""
        return self.exact_edge(eid, cancel=job.event if job is not None else None)

    @rpc()
    def rpc_node(self, node: str) -> dict[str, Any]:
        """A clicked node: a head opens its attention pattern below the graph (an MLP: see ``neurons``)."""
        ids = self.data.ids
        if node not in ids:
            raise KeyError(f"node {node!r} is not in this graph")
        i = ids.index(node)
        score = json_float(self.data.value[i]) if self.data.value is not None else None
        out = {"id": node, "kind": self.data.kinds[i], "layer": int(self.data.layer[i]), "score": score}
        m = _HEAD.match(node)
        if m:  # in the message handler's thread: the new widget's comm opens there
            layer, head = int(m.group(1)), int(m.group(2))
            self.open_head(layer, head)
            out.update(head=head, opened="attention", prompt=self._prompt())
        return out

    @rpc(background=True)
    def rpc_neurons(self, node: str, job: Job | None = None) -> dict[str, Any]:
        """A clicked MLP node ``m{L}``: its top neurons for the task (`top_neurons`)."""
        m = _MLP.match(str(node))
        if m is None or node not in self.data.ids:
            raise KeyError(f"node {node!r} is not an MLP of this graph (MLP nodes are named m0, m1, ...)")
        r = self.top_neurons(int(m.group(1)), cancel=job.event if job is not None else None)
        return {"id": node, "layer": r["layer"], "neurons": r["neurons"], "values": r["values"], "how": r["how"]}

    @rpc()
    def rpc_exported(self, svg: str) -> dict[str, Any]:
        """The view's SVG export, kept as ``self.svg``."""
        if not isinstance(svg, str) or not svg.lstrip().startswith("<svg"):
            raise ValueError("an SVG export must be the text of an <svg> element")
        self.svg = svg
        return {"bytes": len(svg.encode())}

    def _image_saved(self, image: Any) -> None:
        """Every SVG the view sends (its SVG button, or save_image) is kept as ``self.svg``."""
        if image.format == "svg":
            self.svg = image.data.decode("utf-8", "replace")

    # -- display: the graph with its drill-down box below ------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return ipywidgets.VBox([self, self.detail])._repr_mimebundle_(**kwargs)


def _circuit_edge_names(c: Any) -> list[str]:
    """Edge names of a Circuit (or of a plain list of names)."""
    if isinstance(c, (list, tuple, set, frozenset)):
        return list(c)
    for attr in ("edge_names", "edges", "names"):
        v = getattr(c, attr, None)
        if callable(v):
            v = v()
        if v is not None:
            return list(v)
    raise TypeError(f"cannot read the edges of {type(c).__name__}")
