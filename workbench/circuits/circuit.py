"""A circuit: a set of edges of one model's computation graph, saved as JSON, applied as a spec.

``circuit.spec(corrupted=prompt)`` (or ``mean=prompts``) is an intervention spec like any other:
``model.run(prompt, [circuit.spec(corrupted=...)])`` and ``model.generate(...)`` run the model
"with only this circuit": every edge outside it carries its sender's value on the corrupted prompt
(recorded beforehand, one run) or its mean over the ``mean`` prompts' tokens, every edge inside it
the current run's value. With ``corrupted`` the prompt must have the corrupted prompt's token length
and, in generation, the patch applies to the prompt pass (as `Patch` does); the mean applies at
every step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..core.specs import Spec, register_spec_kind
from .graph import ComputationGraph, GraphError

__all__ = ["Circuit", "CircuitSpec", "CircuitModelError"]


class CircuitModelError(GraphError):
    """A circuit saved for another model (or another graph) applied to this one."""


@dataclass
class Circuit:
    """A set of edges (names, ``"a0.h3->m2"``) of the graph ``graph_config`` describes.

    ``model_name`` and ``graph_config`` travel with it (JSON), so applying it to another model is a
    clear error. ``meta`` holds where it came from (method, size, faithfulness).
    """

    edges: list[str]
    graph_config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.edges = list(dict.fromkeys(self.edges))
        g = self.graph
        for e in self.edges:
            g.edge(e)  # clear error for a name the graph does not have

    @classmethod
    def from_edges(cls, graph: ComputationGraph, edges: Any, **meta: Any) -> Circuit:
        """A circuit of ``graph`` from edge names, indices or a bool mask."""
        ids = graph.edge_ids(edges).tolist()
        names = graph.edge_names
        return cls([names[i] for i in sorted(ids)], dict(graph.config), dict(meta))

    @property
    def model_name(self) -> str:
        return str(self.graph_config.get("model", ""))

    @property
    def graph(self) -> ComputationGraph:
        g = getattr(self, "_graph", None)
        if g is None:
            g = self._graph = ComputationGraph.from_config(self.graph_config)
        return g

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def __len__(self) -> int:
        return len(self.edges)

    def __contains__(self, edge: str) -> bool:
        return edge in set(self.edges)

    @property
    def nodes(self) -> list[str]:
        """Nodes touched by the circuit's edges, in the graph's order."""
        g = self.graph
        used = set()
        for e in self.edges:
            a, b = e.split("->")
            used.update((a, b))
        return [n for n in g.nodes if n in used]

    def mask(self, graph: ComputationGraph | None = None) -> torch.Tensor:
        """A bool ``[n_edges]`` mask of the circuit's edges in ``graph`` (default: its own)."""
        g = graph or self.graph
        return g.mask(self.edges)

    def check(self, model: Any) -> None:
        """Refuse a model this circuit was not saved for (`CircuitModelError`)."""
        mine = self.graph_config
        if mine.get("model") and model.name and mine["model"] != model.name:
            raise CircuitModelError(f"this circuit was saved for the model {mine['model']!r}, not {model.name!r}: "
                                    "find the circuit again on this model")
        try:
            self.graph.check_model(model)
        except GraphError as e:
            raise CircuitModelError(f"this circuit does not fit the model {model.name!r}: {e}") from None

    def spec(self, corrupted: str | None = None, mean: list[str] | None = None) -> CircuitSpec:
        """The spec that runs the model with only this circuit (edges outside it patched)."""
        return CircuitSpec(edges=list(self.edges), graph=dict(self.graph_config), corrupted=corrupted, mean=mean)

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": "circuit", "model": self.model_name, "graph": self.graph_config, "edges": self.edges,
                "meta": self.meta}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], model: Any = None) -> Circuit:
        if not isinstance(d, dict) or "edges" not in d or "graph" not in d:
            raise ValueError("not a circuit: expected a JSON object with 'graph' and 'edges' (Circuit.to_json output)")
        c = cls(list(d["edges"]), dict(d["graph"]), dict(d.get("meta") or {}))
        if model is not None:
            c.check(model)
        return c

    @classmethod
    def from_json(cls, text: str, model: Any = None) -> Circuit:
        """Rebuild from `to_json`; with ``model``, refuse a circuit saved for another model."""
        return cls.from_dict(json.loads(text), model)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.to_json())
        return p

    @classmethod
    def load(cls, path: str | Path, model: Any = None) -> Circuit:
        """Load a saved circuit; with ``model``, refuse one saved for another model."""
        return cls.from_json(Path(path).read_text(), model)

    def __repr__(self) -> str:
        return f"Circuit({self.model_name!r}, {len(self.edges)} edges of {self.graph.n_edges}, {self.meta.get('method', '')})"


@register_spec_kind
@dataclass
class CircuitSpec(Spec):
    """Run with only a circuit: edges outside ``edges`` carry the corrupted (or mean) value.

    ``graph`` is the circuit's graph config (it names the model); ``corrupted`` a prompt of the
    same token length, or ``mean`` prompts whose every token's sender outputs are averaged.
    """

    kind: ClassVar[str] = "circuit"
    site: str = "resid_pre.0"
    edges: list[str] = field(default_factory=list)
    graph: dict[str, Any] = field(default_factory=dict)
    corrupted: str | None = None
    mean: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.corrupted is None) == (self.mean is None):
            raise ValueError("a circuit spec needs corrupted='a prompt' or mean=['prompts', ...] (one of them)")
        if self.mean is not None:
            self.mean = [str(p) for p in self.mean]
            if not self.mean:
                raise ValueError("mean=[] holds no prompt to average over")
        if not self.graph:
            raise ValueError("a circuit spec needs its graph config (use Circuit.spec)")
        self.edges = list(self.edges)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["graph"] = dict(self.graph)  # a dict, not the list of its keys
        return d

    def describe(self) -> str:
        src = f"corrupted {self.corrupted[:30]!r}" if self.corrupted is not None else f"mean of {len(self.mean)} prompts"
        return f"circuit of {len(self.edges)} edges ({src})"

    def compile(self, model: Any) -> list:
        from .edges import circuit_ops

        circuit = Circuit(self.edges, self.graph)
        circuit.check(model)
        return circuit_ops(model, circuit, corrupted=self.corrupted, mean=self.mean, rows=self.rows)
