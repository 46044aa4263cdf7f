"""Exercises of ``03_lens_and_tracing.ipynb``: the logit lens by hand, and normalizing a patching effect."""

from __future__ import annotations

from typing import Any

from ._feedback import Wrong, as_tensor, attempt, expect_close
from ._registry import exercise

_PROMPT = "The capital of France is"


@exercise("03.logit_lens", "the logit lens of one layer at the last position, by hand")
def check_logit_lens(answer: Any, model: Any, layers: tuple[int, ...] = (5, 15, 25)) -> str:
    """``answer(model, prompt, layer) -> [vocab]`` log-probabilities; compared with `logit_lens`'s top 5."""
    import torch

    from workbench.causal.lens import logit_lens

    ref = logit_lens(model, _PROMPT, layers=list(layers), positions=[-1], top_k=5)
    for i, layer in enumerate(layers):
        got = as_tensor(attempt(answer, model, _PROMPT, layer), what=f"your lens at layer {layer}")
        if got.dim() != 1 or got.shape[0] < int(ref.top_ids.max()) + 1:
            raise Wrong(f"return one log-probability per vocabulary token ([vocab]); got shape {tuple(got.shape)}")
        probs = got.exp()
        if abs(float(probs.sum()) - 1.0) > 1e-2:
            raise Wrong(f"at layer {layer} your values' exp() sums to {float(probs.sum()):.3f}, not 1: "
                        "return log_softmax of the logits")
        top_ids = ref.top_ids[i, 0]
        mine = torch.topk(probs, 5).indices
        if mine.tolist() != top_ids.tolist():
            names = [model.tokenizer.decode([int(t)]) for t in top_ids]
            raise Wrong(f"at layer {layer} the lens's top 5 are {names}; yours are "
                        f"{[model.tokenizer.decode([int(t)]) for t in mine]} (apply the final norm, then the unembedding)")
        expect_close(probs[top_ids], ref.top_probs[i, 0], what=f"your top-5 probabilities at layer {layer}",
                     atol=2e-3, rtol=2e-2)
    return f"your lens matches wb.logit_lens at layers {list(layers)}"


@exercise("03.restored", "the normalized patching effect (0 = corrupted, 1 = clean) from raw metrics")
def check_restored(answer: Any, result: Any) -> str:
    """``answer(raw, clean_metric, corrupted_metric) -> tensor``; compared with a `PatchingResult`'s values."""
    got = attempt(answer, result.raw.clone(), float(result.clean_metric), float(result.corrupted_metric))
    expect_close(got, result.values, what="your normalized effects", atol=1e-4, rtol=1e-3)
    best = divmod(int(result.values.argmax()), result.values.shape[1])
    return (f"matches the sweep's values; the largest effect is at layer {result.layers[best[0]]}, "
            f"column {result.columns[best[1]]} ({float(result.values.max()):.2f})")
