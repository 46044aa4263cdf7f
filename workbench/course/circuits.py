"""Exercises of ``04_circuits.ipynb``: a task's metric, and a circuit from edge scores."""

from __future__ import annotations

from typing import Any

from ._feedback import Wrong, attempt, expect_close
from ._registry import exercise


@exercise("04.logit_diff", "the logit difference (answer minus wrong token) of every pair of a task")
def check_logit_diff(answer: Any, model: Any, task: Any) -> str:
    """``answer(logits, answer_ids, wrong_ids) -> [n]`` on last-position logits; compared with ``task.metric``."""
    res = model.run(model.batch_from_ids(task.clean_ids.tolist()), top_k=1, logits="last")
    logits = res.logits.float()
    if logits.dim() == 3:
        logits = logits[:, -1]
    ref = task.metric(logits)
    got = attempt(answer, logits.clone(), task.answer_ids.clone(), task.wrong_ids.clone())
    expect_close(got, ref, what="your logit differences", atol=1e-3, rtol=1e-3)
    return f"mean logit difference {float(ref.mean()):.2f} over {len(ref)} pairs, as task.metric says"


@exercise("04.top_edges", "a circuit of the n edges with the largest absolute scores")
def check_top_edges(answer: Any, scores: Any, n: int = 200) -> str:
    """``answer(scores, n) -> Circuit`` (or edge names); compared with `workbench.circuits.top_n`."""
    from workbench.circuits.circuit import Circuit
    from workbench.circuits.discovery import top_n

    ref = top_n(scores, n)
    got = attempt(answer, scores, n)
    names = list(got.edges) if isinstance(got, Circuit) else got
    try:
        names = [str(e) for e in names]
    except TypeError:
        raise Wrong(f"return a Circuit or a list of edge names, not {type(got).__name__}") from None
    want = set(ref.edges)
    if len(names) != n:
        raise Wrong(f"your circuit has {len(names)} edges, expected {n}")
    missing = want - set(names)
    if missing:
        example = sorted(missing)[:3]
        raise Wrong(f"{len(missing)} of the top {n} edges by |score| are missing, e.g. {example} "
                    "(rank by the absolute score: negative edges matter too)")
    expect_close(float(len(want & set(names))), float(n), what="edges in common")
    return f"your {n} edges are top_n's"
