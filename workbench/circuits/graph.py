"""The computation graph over components: token embeddings, attention heads, MLPs and the logits.

Nodes (in forward order):

- ``"embed"``: the residual stream entering layer 0 (token embeddings, plus position embeddings
  where the model adds them: those are the same in clean and corrupted runs);
- ``"a{L}.h{H}"``: attention head H of layer L (its output: its share of the output projection);
- ``"m{L}"``: the MLP of layer L;
- ``"logits"``: the unembedding (its input is the final norm's input).

Edges run from every upstream node's output to every downstream node's input through the residual
stream: a node's input is the sum of its upstream nodes' outputs (plus constants such as biases).
Heads of the same layer do not feed each other; MLP L reads layer L's heads (sequential blocks,
Llama and GPT-2), except in GPT-NeoX's parallel blocks, where MLP L reads the stream entering layer
L (``resid_pre.L``), so layer L's heads do not feed it.

**Receivers.** Every node but ``embed`` receives. A head's input is its own copy of the stream,
normalized by the layer's pre-attention norm. ``split_qkv=True`` splits it into three receivers,
``"a{L}.h{H}.q"``, ``".k"`` and ``".v"``. **Grouped-query attention** (Llama family, e.g. SmolLM2:
9 query heads share 3 key/value heads): a key/value projection serves a whole group, so its input
is one receiver per key/value head, ``"a{L}.kv{G}"`` (keys and values), or with ``split_qkv``
``"a{L}.kv{G}.k"`` and ``"a{L}.kv{G}.v"``; the receiver ``"a{L}.h{H}"`` is then head H's query
input only. Models without GQA (GPT-2, GPT-NeoX) have no ``kv`` nodes. Receiver-only nodes
(``.q/.k/.v``, ``kv``) are nodes of the graph too (kind ``"q"``, ``"k"``, ``"v"``, ``"kv"``).

Edge names are ``"a0.h3->m2"``, ``"embed->a1.h0.q"``, ``"m1->logits"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import WorkbenchError

__all__ = ["ComputationGraph", "GraphError", "EdgeNameError", "graph_config"]


class cached_property:  # noqa: N801
    """A cached property without a lock: `functools.cached_property` holds an RLock on Python < 3.12,
    and nnsight pickles the workbench's classes by value for remote traces, which an RLock refuses."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


class GraphError(WorkbenchError, ValueError):
    """A model whose blocks the computation graph cannot describe, or a graph that does not match."""


class EdgeNameError(GraphError, KeyError):
    """An edge or node name that is not in the graph (a head that does not exist, a bad name)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


_NODE = re.compile(r"embed|logits|m(\d+)|a(\d+)\.(h|kv)(\d+)(?:\.([qkv]))?")
#: Families whose blocks are sums of attention and MLP outputs with pre-norms (what the graph needs).
SUPPORTED = ("llama", "gpt2", "gpt_neox")


def _family(model: Any) -> str:
    fam = model.arch.family
    mtype = getattr(getattr(model.hf, "config", None), "model_type", "")
    if fam not in SUPPORTED or mtype.startswith(("gemma", "olmo2")):
        raise GraphError(
            f"the circuit graph supports the Llama family (Llama, SmolLM2, Qwen2, Mistral), GPT-2 and GPT-NeoX; "
            f"{mtype or fam!r} has norms on its block outputs (or an unknown layout), so a block's output is not "
            "the sum of its heads' and MLP's contributions")
    if not model.arch.ln1 or not model.arch.ln2:
        raise GraphError(f"the circuit graph needs pre-norm blocks; the architecture map of {mtype!r} names no "
                         "pre-attention or pre-MLP norm")
    return fam


def graph_config(model: Any, split_qkv: bool = False) -> dict[str, Any]:
    """The plain-data description of a model's graph (what a saved circuit records)."""
    fam = _family(model)
    cfg = model.hf.config
    n_kv = getattr(cfg, "num_key_value_heads", None) or model.n_heads
    parallel = bool(getattr(cfg, "use_parallel_residual", False)) if fam == "gpt_neox" else False
    return {"model": model.name, "family": fam, "n_layers": model.n_layers, "n_heads": model.n_heads,
            "n_kv_heads": int(n_kv), "split_qkv": bool(split_qkv), "parallel": parallel}


@dataclass
class ComputationGraph:
    """Nodes, receivers and edges of one model's computation graph (see the module docstring).

    Build it with `ComputationGraph.from_model`. ``nodes`` are names in forward order, with
    ``node_kind`` (``"embed"``, ``"head"``, ``"mlp"``, ``"logits"``, and receiver-only ``"q"``,
    ``"k"``, ``"v"``, ``"kv"``), ``node_layer`` (-1 for embed, ``n_layers`` for logits) and
    ``node_head`` (head or kv-head index, -1 otherwise). ``edges`` is a ``[2, n_edges]`` long tensor of
    node indices (row 0 the source, row 1 the destination); ``edge_names[i]`` names edge i.
    ``senders`` / ``receivers`` are node indices of the nodes with an output / an input; edge i goes
    from sender ``edge_sender[i]`` to receiver ``edge_receiver[i]`` (positions in those lists).
    """

    config: dict[str, Any]
    nodes: list[str] = field(default_factory=list)
    node_kind: list[str] = field(default_factory=list)
    node_layer: list[int] = field(default_factory=list)
    node_head: list[int] = field(default_factory=list)
    senders: list[int] = field(default_factory=list)
    receivers: list[int] = field(default_factory=list)
    edge_sender: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    edge_receiver: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Any, split_qkv: bool = False) -> ComputationGraph:
        """The graph of a `workbench.Model` (Llama family with GQA, GPT-2, GPT-NeoX)."""
        return cls.from_config(graph_config(model, split_qkv))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ComputationGraph:
        """The graph described by `graph_config` output (or a saved circuit's ``graph``)."""
        g = cls(dict(config))
        nL, H, G = int(config["n_layers"]), int(config["n_heads"]), int(config["n_kv_heads"])
        split, parallel = bool(config["split_qkv"]), bool(config["parallel"])
        gqa = G != H

        def add(name: str, kind: str, layer: int, head: int = -1) -> int:
            g.nodes.append(name)
            g.node_kind.append(kind)
            g.node_layer.append(layer)
            g.node_head.append(head)
            return len(g.nodes) - 1

        src, dst = [], []
        ports: list[dict[str, Any]] = []  # per layer: receiver positions of q/k/v ports and the MLP

        def connect(recv_node: int, n_up: int) -> int:
            r = len(g.receivers)
            g.receivers.append(recv_node)
            src.extend(range(n_up))
            dst.extend([r] * n_up)
            return r

        g.senders.append(add("embed", "embed", -1))
        for L in range(nL):
            n_up = len(g.senders)  # every sender of earlier layers
            heads = [add(f"a{L}.h{h}", "head", L, h) for h in range(H)]
            q, k, v = [], [], []
            if not split:
                q = [connect(n, n_up) for n in heads]
                if gqa:
                    kv = [connect(add(f"a{L}.kv{j}", "kv", L, j), n_up) for j in range(G)]
                    k, v = kv, kv
                else:
                    k, v = q, q
            else:
                q = [connect(add(f"a{L}.h{h}.q", "q", L, h), n_up) for h in range(H)]
                tag = "kv" if gqa else "h"
                k = [connect(add(f"a{L}.{tag}{j}.k", "k", L, j), n_up) for j in range(G)]
                v = [connect(add(f"a{L}.{tag}{j}.v", "v", L, j), n_up) for j in range(G)]
            g.senders.extend(heads)
            mlp = add(f"m{L}", "mlp", L)
            m = connect(mlp, n_up if parallel else len(g.senders))
            g.senders.append(mlp)
            ports.append({"q": q, "k": k, "v": v, "mlp": m, "n_up_attn": n_up,
                          "n_up_mlp": n_up if parallel else n_up + H})
        logits = add("logits", "logits", nL)
        g._logits_receiver = connect(logits, len(g.senders))
        g._ports = ports
        g.edge_sender = torch.tensor(src, dtype=torch.long)
        g.edge_receiver = torch.tensor(dst, dtype=torch.long)
        return g

    # -- sizes and names ------------------------------------------------------------------------
    @property
    def split_qkv(self) -> bool:
        return bool(self.config["split_qkv"])

    @property
    def model_name(self) -> str:
        return str(self.config.get("model", ""))

    @property
    def n_layers(self) -> int:
        return int(self.config["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.config["n_heads"])

    @property
    def n_kv_heads(self) -> int:
        return int(self.config["n_kv_heads"])

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return int(self.edge_sender.numel())

    @property
    def n_senders(self) -> int:
        return len(self.senders)

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    @cached_property
    def node_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.nodes)}

    @cached_property
    def edges(self) -> torch.Tensor:
        """``[2, n_edges]`` node indices: ``edges[0]`` sources, ``edges[1]`` destinations."""
        s = torch.tensor(self.senders, dtype=torch.long)[self.edge_sender]
        r = torch.tensor(self.receivers, dtype=torch.long)[self.edge_receiver]
        return torch.stack([s, r])

    @cached_property
    def edge_names(self) -> list[str]:
        n = self.nodes
        return [f"{n[a]}->{n[b]}" for a, b in self.edges.T.tolist()]

    @cached_property
    def edge_index(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.edge_names)}

    @cached_property
    def _matrix_index(self) -> torch.Tensor:
        """``[n_senders, n_receivers]`` -> edge index, -1 where no edge exists."""
        m = torch.full((self.n_senders, self.n_receivers), -1, dtype=torch.long)
        m[self.edge_sender, self.edge_receiver] = torch.arange(self.n_edges)
        return m

    def ports(self, layer: int) -> dict[str, Any]:
        """Receiver positions of layer ``layer``'s q ports (one per head), k and v ports (one per kv
        head), its MLP, and how many senders feed its attention / MLP (a prefix of ``senders``)."""
        return self._ports[layer]

    @property
    def logits_receiver(self) -> int:
        return self._logits_receiver

    @cached_property
    def receiver_layers(self) -> torch.Tensor:
        """``[n_receivers]``: the layer each receiver sits in (the logits: ``n_layers``)."""
        out = torch.full((self.n_receivers,), self.n_layers, dtype=torch.long)
        for L in range(self.n_layers):
            p = self.ports(L)
            out[list(p["q"]) + list(p["k"]) + list(p["v"]) + [p["mlp"]]] = L
        return out

    def __repr__(self) -> str:
        c = self.config
        return (f"ComputationGraph({c.get('model', '')!r}, {c['family']}, {self.n_nodes} nodes, {self.n_edges} edges, "
                f"split_qkv={self.split_qkv})")

    # -- look-ups with clear errors ---------------------------------------------------------------
    def node(self, name: str) -> int:
        """The index of a node, or `EdgeNameError` saying why the name is not one."""
        i = self.node_index.get(name)
        if i is not None:
            return i
        m = _NODE.fullmatch(name) if isinstance(name, str) else None
        if m is None:
            raise EdgeNameError(f"{name!r} is not a node name: nodes are 'embed', 'a{{L}}.h{{H}}', 'm{{L}}', 'logits'"
                                + (" and 'a{L}.h{H}.q/.k/.v'" if self.split_qkv else ""))
        nL, H, G = self.n_layers, self.n_heads, self.n_kv_heads
        layer = m.group(1) or m.group(2)
        if layer is not None and int(layer) >= nL:
            raise EdgeNameError(f"node {name!r}: layer {layer} does not exist (layers 0..{nL - 1})")
        if m.group(3) == "h" and int(m.group(4)) >= H:
            raise EdgeNameError(f"node {name!r}: head {m.group(4)} does not exist (heads 0..{H - 1})")
        if m.group(3) == "kv":
            if G == H:
                raise EdgeNameError(f"node {name!r}: this model has no grouped key/value heads; its heads' "
                                    "key inputs are 'a{L}.h{H}.k'" if self.split_qkv else "part of 'a{L}.h{H}'")
            if int(m.group(4)) >= G:
                raise EdgeNameError(f"node {name!r}: kv head {m.group(4)} does not exist (kv heads 0..{G - 1})")
        if m.group(5) and not self.split_qkv:
            raise EdgeNameError(f"node {name!r}: q/k/v inputs are nodes of a graph built with split_qkv=True")
        if m.group(5) == "q" and m.group(3) == "kv":
            raise EdgeNameError(f"node {name!r}: queries belong to heads: use 'a{layer}.h{{H}}.q'")
        if m.group(5) in ("k", "v") and m.group(3) == "h" and G != H:
            raise EdgeNameError(f"node {name!r}: in this GQA model keys and values belong to kv heads: "
                                f"'a{layer}.kv{{G}}.{m.group(5)}' (kv head = head // {H // G})")
        if not m.group(5) and self.split_qkv and m.group(3) == "kv":
            raise EdgeNameError(f"node {name!r}: with split_qkv the kv inputs are '{name}.k' and '{name}.v'")
        raise EdgeNameError(f"node {name!r} is not in this graph")

    def edge(self, name: str | tuple[str, str]) -> int:
        """The index of an edge ``"a0.h3->m2"`` (or a ``(src, dst)`` pair); `EdgeNameError` if there is none."""
        if isinstance(name, tuple):
            name = f"{name[0]}->{name[1]}"
        i = self.edge_index.get(name) if isinstance(name, str) else None
        if i is not None:
            return i
        if not isinstance(name, str) or "->" not in name:
            raise EdgeNameError(f"{name!r} is not an edge name: write 'src->dst', e.g. 'a0.h1->m2'")
        a, b = (p.strip() for p in name.split("->", 1))
        ia, ib = self.node(a), self.node(b)
        if ia not in set(self.senders):
            raise EdgeNameError(f"edge {name!r}: {a!r} is an input of a head, not a node with an output")
        if ib not in set(self.receivers):
            what = "a head with q/k/v inputs: name one of them" if self.split_qkv else "no receiver"
            raise EdgeNameError(f"edge {name!r}: {b!r} is {what}")
        raise EdgeNameError(f"edge {name!r} does not exist: {a!r} does not feed {b!r} (only earlier layers feed a node; "
                            "in GPT-NeoX's parallel blocks a layer's heads do not feed its MLP)")

    def edge_ids(self, edges: Any) -> torch.Tensor:
        """Edge names, indices, a `Circuit`, or a bool mask ``[n_edges]`` as a long tensor of indices."""
        if hasattr(edges, "edges") and hasattr(edges, "graph_config"):  # a Circuit
            edges = edges.edges
        if isinstance(edges, torch.Tensor) and edges.dtype == torch.bool:
            if edges.shape != (self.n_edges,):
                raise ValueError(f"an edge mask has shape [n_edges] = [{self.n_edges}], not {list(edges.shape)}")
            return edges.nonzero().reshape(-1)
        if isinstance(edges, (str, tuple)):
            edges = [edges]
        out = []
        for e in edges.tolist() if isinstance(edges, torch.Tensor) else edges:
            if isinstance(e, (int,)) and not isinstance(e, bool):
                if not 0 <= e < self.n_edges:
                    raise IndexError(f"edge index {e} is out of range: this graph has {self.n_edges} edges")
                out.append(e)
            else:
                out.append(self.edge(e))
        return torch.tensor(out, dtype=torch.long)

    def mask(self, edges: Any) -> torch.Tensor:
        """A bool ``[n_edges]`` mask of the given edges."""
        m = torch.zeros(self.n_edges, dtype=torch.bool)
        m[self.edge_ids(edges)] = True
        return m

    def matrix(self, edge_values: torch.Tensor) -> torch.Tensor:
        """Per-edge values ``[..., n_edges]`` as ``[..., n_senders, n_receivers]`` (0 where no edge exists)."""
        out = edge_values.new_zeros(*edge_values.shape[:-1], self.n_senders, self.n_receivers)
        out[..., self.edge_sender, self.edge_receiver] = edge_values
        return out

    def check_model(self, model: Any) -> None:
        """Refuse a model whose graph differs from this one (another model or another shape)."""
        other = graph_config(model, self.split_qkv)
        mine = {k: v for k, v in self.config.items() if k != "model"}
        if {k: v for k, v in other.items() if k != "model"} != mine:
            raise GraphError(f"this graph was built for {self.model_name or 'another model'} ({mine}); "
                             f"the model {model.name!r} has {other}")

    def to_pandas(self):
        """One row per node: name, kind, layer, head."""
        import pandas as pd

        return pd.DataFrame({"node": self.nodes, "kind": self.node_kind, "layer": self.node_layer, "head": self.node_head})
