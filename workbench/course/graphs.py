"""Exercises of ``07_attribution_graphs.ipynb``: reading edges, and the graph's prediction of an ablation."""

from __future__ import annotations

from typing import Any

from ._feedback import Wrong, attempt, expect_close, expect_equal
from ._registry import exercise

_CANDIDATES = 20  # the top features by influence that 07.total_effect picks its default node from


class _Flipped:
    """The same graph with every edge's sign flipped (everything else read through to the graph)."""

    def __init__(self, graph: Any) -> None:
        self._graph = graph
        self.adjacency = -graph.adjacency

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graph, name)


@exercise("07.top_input", "the node with the largest direct effect (either sign) on the top logit")
def check_top_input(answer: Any, graph: Any) -> str:
    """``answer(graph) -> node id``; compared with the graph's adjacency row of its first logit, on the
    graph and on a copy with every edge's sign flipped (so an answer that only looks at one sign fails)."""
    row = graph.adjacency[graph.logit_start].abs()
    ref = graph.node_ids[int(row.argmax())]
    for g, note in ((graph, ""), (_Flipped(graph), " (on the same graph with every edge's sign flipped)")):
        got = attempt(answer, g)
        if not isinstance(got, str):
            raise Wrong(f"return a node id such as {ref[:1]}…, a str, not {type(got).__name__}")
        expect_equal(got, ref, what=f"your node{note}")
    return f"{ref} sends {float(graph.adjacency[graph.logit_start, graph.index(ref)]):+.3f} straight to the top logit"


@exercise("07.total_effect", "the graph's predicted change of the top logit when one feature is zeroed")
def check_total_effect(answer: Any, graph: Any, node: str | None = None) -> str:
    """``answer(graph, node) -> float`` through every path; compared with ``graph.predict({node: 0})``."""
    if node is None:  # of the most influential features, the one whose indirect paths matter most
        infl = graph.influence()[: graph.n_features]
        top = infl.argsort(descending=True)[: min(_CANDIDATES, graph.n_features)].tolist()
        indirect = [abs(float(graph.predict({i: 0.0})[0]) + float(graph.adjacency[graph.logit_start, i]))
                    for i in top]
        node = graph.node_ids[top[max(range(len(top)), key=indirect.__getitem__)]]
    ref = float(graph.predict({node: 0.0})[0])
    got = attempt(answer, graph, node)
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise Wrong(f"return one number, not {type(got).__name__}") from None
    direct = -float(graph.adjacency[graph.logit_start, graph.index(node)])
    if abs(got - direct) < 1e-6 and abs(direct - ref) > 1e-4:
        raise Wrong(f"{got:.4f} is only the direct edge; the prediction {ref:.4f} also counts the paths through "
                    "later features (solve with (I - A) restricted to features)")
    expect_close(got, ref, what="your predicted change", atol=1e-4, rtol=1e-3)
    return f"zeroing {node} moves the top logit by {ref:+.3f} in the replacement model"
