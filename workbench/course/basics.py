"""Exercises of ``01_tour.ipynb``: running a prompt and reading what the model predicts."""

from __future__ import annotations

from typing import Any

from ._feedback import Wrong, attempt, expect_close, expect_equal
from ._registry import exercise

_PROMPTS = ("The capital of France is", "One, two, three,", "import numpy as")


@exercise("01.top_token", "the text of the most likely next token of a prompt")
def check_top_token(answer: Any, model: Any) -> str:
    """``answer(model, prompt) -> str``, checked on three prompts against ``model.run(...).top``."""
    for prompt in _PROMPTS:
        ref = model.run(prompt, top_k=1).top.tokens[0][0]
        got = attempt(answer, model, prompt)
        if not isinstance(got, str):
            raise Wrong(f"for {prompt!r} your function returned {type(got).__name__}; return the token's text (a str)")
        expect_equal(got, ref, what=f"your top token for {prompt!r}")
    return f"right on all {len(_PROMPTS)} prompts"


@exercise("01.neuron_mean", "the mean activation of one MLP neuron over a prompt's tokens")
def check_neuron_mean(answer: Any, model: Any, layer: int = 20, unit: int = 0) -> str:
    """``answer(model, prompt, layer, unit) -> float``, checked against a ``neurons.L`` capture."""
    prompt = _PROMPTS[0]
    ref = float(model.run(prompt, capture=[f"neurons.{layer}"], top_k=0)[f"neurons.{layer}"][0, :, unit].float().mean())
    got = attempt(answer, model, prompt, layer, unit)
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise Wrong(f"return one number, not {type(got).__name__}") from None
    expect_close(got, ref, what="your mean", atol=1e-4, rtol=1e-3)
    return f"neuron {layer}.{unit} averages {ref:.4f} over {prompt!r}"
