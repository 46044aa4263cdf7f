"""Exercises of ``05_neurons.ipynb``: AUROC of a neuron between two sets, and a mean-difference direction."""

from __future__ import annotations

from typing import Any

from ._feedback import Wrong, attempt, expect_close
from ._registry import exercise


@exercise("05.auroc", "the AUROC of one neuron's activations on set A against set B")
def check_auroc(answer: Any) -> str:
    """``answer(a, b) -> float`` on seeded samples with ties; compared with `workbench.neurons.stats.auroc`."""
    import numpy as np

    from workbench.neurons.stats import auroc

    rng = np.random.default_rng(5)
    cases = [(rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 25)),
             (np.round(rng.normal(0.0, 1.0, 40), 1), np.round(rng.normal(0.2, 1.0, 35), 1)),  # ties
             (np.zeros(10), np.zeros(12))]
    for i, (a, b) in enumerate(cases):
        got = attempt(answer, a.copy(), b.copy())
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise Wrong(f"return one number, not {type(got).__name__}") from None
        ref = auroc(a, b)
        try:
            expect_close(got, ref, what=f"your AUROC on case {i + 1}", atol=1e-6, rtol=0)
        except Wrong as exc:
            hint = " (count ties as one half)" if i else ""
            raise Wrong(f"{exc}{hint}") from None
    return "matches workbench.neurons.stats.auroc, ties included"


@exercise("05.mean_difference", "a steering direction: mean last-token residual on A minus on B")
def check_mean_difference(answer: Any, model: Any, a: list[str], b: list[str], layer: int) -> str:
    """``answer(model, a, b, layer) -> [d_model]``; compared with `wb.mean_difference`."""
    from workbench.causal.directions import mean_difference

    ref = mean_difference(model, a, b, layer)
    got = attempt(answer, model, list(a), list(b), layer)
    expect_close(got, ref, what="your direction", atol=1e-3, rtol=1e-3)
    return f"your direction matches wb.mean_difference (norm {float(ref.norm()):.2f})"
