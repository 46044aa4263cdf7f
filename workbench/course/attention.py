"""Exercises of ``02_attention.ipynb``: head scores from attention patterns."""

from __future__ import annotations

from typing import Any

from ._feedback import Wrong, attempt, expect_close
from ._registry import exercise

_SEQS, _LEN, _SEED = 4, 12, 7


def _patterns(model: Any) -> tuple[Any, list[Any]]:
    """Repeated random sequences and every layer's pattern on them (``[b, H, T, T]`` each)."""
    from workbench.circuits.heads import repeated_sequences

    ids = repeated_sequences(model, _SEQS, _LEN, seed=_SEED)
    sites = [f"pattern.{layer}" for layer in range(model.n_layers)]
    res = model.run(model.batch_from_ids(ids.tolist()), capture=sites, top_k=0, logits=None)
    return ids, [res[s].float() for s in sites]


def _score_check(answer: Any, model: Any, kind: str) -> str:
    from workbench.circuits.heads import head_scores

    _, patterns = _patterns(model)
    ref = head_scores(model, _SEQS, _LEN, seed=_SEED, copying=False, progress=False).scores(kind)
    rows = []
    for layer, pattern in enumerate(patterns):
        got = attempt(answer, pattern.clone(), _LEN, what=f"your function (layer {layer})")
        try:
            expect_close(got, ref[layer], what=f"your scores for layer {layer}", atol=1e-4, rtol=1e-3)
        except Wrong as exc:
            raise Wrong(f"{exc}. The pattern is [batch, heads, query, key] on [BOS] r r with "
                        f"seq_len={_LEN}; average over the batch and the queries the score counts") from None
        rows.append(got)
    top = ref.flatten().argmax()
    return (f"all {len(patterns)} layers match head_scores; the top {kind.replace('_', '-')} head is "
            f"L{int(top) // ref.shape[1]}.H{int(top) % ref.shape[1]} ({float(ref.flatten()[top]):.2f})")


@exercise("02.previous_token", "previous-token score of every head of one layer, from its pattern")
def check_previous_token(answer: Any, model: Any) -> str:
    """``answer(pattern, seq_len) -> [heads]``: mean attention from each query after the first real token to the one before."""
    return _score_check(answer, model, "previous_token")


@exercise("02.induction", "induction score of every head of one layer, from its pattern")
def check_induction(answer: Any, model: Any) -> str:
    """``answer(pattern, seq_len) -> [heads]``: mean attention from each second-half token to the token after its first copy."""
    return _score_check(answer, model, "induction")


def _pairs(got: Any, n: int, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """The answer as a list of ``(layer, head)`` int pairs, or a `Wrong` saying what it is instead."""
    if not isinstance(got, (list, tuple)):
        raise Wrong(f"return a list of (layer, head) pairs, not a {type(got).__name__}")
    out = []
    for i, item in enumerate(got):
        try:
            layer, head = (int(x) for x in item)
        except (TypeError, ValueError):
            raise Wrong(f"item {i} of your list is {item!r}, not a (layer, head) pair") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise Wrong(f"item {i}, (layer {layer}, head {head}), is outside the model's {n_layers} layers × "
                        f"{n_heads} heads: the score tensor is [layers, heads]") from None
        out.append((layer, head))
    if len(out) != n:
        raise Wrong(f"your list has {len(out)} heads, expected n={n}")
    return out


def _repeat_loss(model: Any, ids: Any, heads: list[tuple[int, int]]) -> float:
    """Mean next-token loss (nats) on the repeated half of ``ids`` with ``heads`` zero-ablated."""
    import torch

    from workbench.core.specs import ablate_heads

    by: dict[int, list[int]] = {}
    for layer, head in heads:
        by.setdefault(layer, []).append(head)
    res = model.run(model.batch_from_ids(ids.tolist()), [ablate_heads(layer, hs) for layer, hs in sorted(by.items())],
                    top_k=1, logits="all")
    T = ids.shape[1]
    pos = torch.arange(T - _LEN, T - 1)
    logp = torch.log_softmax(res.logits[:, pos].float(), -1)
    return float(-logp.gather(-1, ids[:, pos + 1][..., None]).mean())


@exercise("02.top_induction_heads", "the n heads with the highest induction score, best first, from the score tensor")
def check_top_induction_heads(answer: Any, model: Any, n: int = 5) -> str:
    """``answer(induction, n) -> [(layer, head), ...]`` from the ``[layers, heads]`` induction scores, best first.

    Compared with `HeadScores.top`; a right answer is then checked causally: zero-ablating those
    heads against as many random heads, on held-out repeated sequences.
    """
    import random

    from workbench.circuits.heads import head_scores, repeated_sequences

    scores = head_scores(model, _SEQS, _LEN, seed=_SEED, copying=False, progress=False)
    ref = [(layer, head) for layer, head, _ in scores.top("induction", n)]
    got = _pairs(attempt(answer, scores.induction.clone(), n), n, scores.n_layers, scores.n_heads)
    if got != ref:
        if sorted(got) == sorted(ref):
            raise Wrong(f"the right heads, in the wrong order: best first is {ref}")
        bad = next(i for i, (g, r) in enumerate(zip(got, ref, strict=True)) if g != r)
        value = float(scores.induction[got[bad]])
        raise Wrong(f"rank {bad} should be (layer {ref[bad][0]}, head {ref[bad][1]}) with induction score "
                    f"{float(scores.induction[ref[bad]]):.3f}; you have (layer {got[bad][0]}, head {got[bad][1]}), "
                    f"whose score is {value:.3f}. A flat index i of a [layers, heads] tensor is "
                    f"(i // n_heads, i % n_heads)")
    held = repeated_sequences(model, _SEQS, _LEN, seed=_SEED + 1)
    rng = random.Random(_SEED)
    others = [(layer, head) for layer in range(scores.n_layers) for head in range(scores.n_heads)
              if (layer, head) not in set(ref)]
    base = _repeat_loss(model, held, [])
    top = _repeat_loss(model, held, ref)
    rand = [_repeat_loss(model, held, rng.sample(others, min(n, len(others)))) for _ in range(2)]
    return (f"your {n} heads match HeadScores.top. Causally, on held-out repeated sequences, zero-ablating them moves "
            f"the loss on the repeated half from {base:.2f} to {top:.2f} nats (two random sets of {n} heads: "
            + ", ".join(f"{r:.2f}" for r in rand) + ")")
