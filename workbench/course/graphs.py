"""Exercises of ``07_attribution_graphs.ipynb``: reading edges, and the graph's prediction of an ablation."""

from __future__ import annotations

from typing import Any

from ._feedback import Wrong, attempt, expect_close, expect_equal
from ._registry import exercise


@exercise("07.top_input", "the node with the largest direct effect (either sign) on the top logit")
def check_top_input(answer: Any, graph: Any) -> str:
    """``answer(graph) -> node id``; compared with the graph's adjacency row of its first logit."""
    row = graph.adjacency[graph.logit_start].abs()
    ref = graph.node_ids[int(row.argmax())]
    got = attempt(answer, graph)
    if not isinstance(got, str):
        raise Wrong(f"return a node id such as {ref[:1]}…, a str, not {type(got).__name__}")
    expect_equal(got, ref, what="your node")
    return f"{ref} sends {float(graph.adjacency[graph.logit_start, graph.index(ref)]):+.3f} straight to the top logit"


@exercise("07.total_effect", "the graph's predicted change of the top logit when one feature is zeroed")
def check_total_effect(answer: Any, graph: Any, node: str | None = None) -> str:
    """``answer(graph, node) -> float`` through every path; compared with ``graph.predict({node: 0})``."""
    if node is None:
        infl = graph.influence()[: graph.n_features]
        node = graph.node_ids[int(infl.argmax())]
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
