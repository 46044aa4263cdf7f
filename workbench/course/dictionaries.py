"""Exercises of ``06_dictionaries.ipynb``: a sparse autoencoder's encoder, and the FVU of a reconstruction."""

from __future__ import annotations

from typing import Any

from ._feedback import Wrong, as_tensor, attempt, expect_close
from ._registry import exercise

#: Prompts whose activations the encoder exercise reads (every token, position 0 included).
PROMPTS = ("The capital of France is Paris.", "def add(a, b):\n    return a + b",
           "A list is a mutable sequence of items.")
_WINDOWS, _CONTEXT = 4, 32


def _site_tokens(model: Any, site: str, prompts: tuple[str, ...] = PROMPTS) -> Any:
    """Every real token's activation at ``site`` over ``prompts``: float32 ``[n_tokens, width]``."""
    import torch

    rows = []
    for p in prompts:
        res = model.run(p, capture=[site], top_k=0, logits=None)
        rows.append(res.activations[site][0].float())
    return torch.cat(rows)


def _check_dictionary(dictionary: Any) -> None:
    from workbench.dictionaries.dictionary import Dictionary

    if not isinstance(dictionary, Dictionary):
        raise Wrong(f"pass the SAE you trained as dictionary=..., not {type(dictionary).__name__}")
    if dictionary.architecture not in ("topk", "relu") or dictionary.normalize is not None or dictionary.center_input:
        raise Wrong("this exercise is about a plain TopK or ReLU SAE (no input normalization); "
                    f"this dictionary is {dictionary.architecture!r} with normalize={dictionary.normalize!r}")


@exercise("06.encode", "a TopK (or ReLU) SAE's encoder, written from its weights")
def check_encode(answer: Any, model: Any, dictionary: Any) -> str:
    """``answer(x, sae) -> [n, d_sae]``: the latents of activations ``x [n, d_in]``, compared with ``sae.encode(x)``."""
    import torch

    _check_dictionary(dictionary)
    d = dictionary
    x = _site_tokens(model, d.site)
    ref = d.encode(x).float()
    got = as_tensor(attempt(answer, x.clone(), d, what="your encode"), "your latents")
    try:
        expect_close(got, ref, what="your latents", atol=1e-4, rtol=1e-3)
    except Wrong as exc:
        xc = x - d.b_pre if d.b_pre is not None else x
        pre = xc @ d.W_enc.float() + d.b_enc.float()
        hints = []
        if tuple(got.shape) == tuple(ref.shape):
            if torch.allclose(got, torch.relu(pre), atol=1e-4, rtol=1e-3) and d.architecture == "topk":
                hints.append(f"that is relu of every pre-activation: a TopK SAE keeps only the k={d.k} largest "
                             "pre-activations of each token (then the ReLU) and zeroes the rest")
            elif d.b_pre is not None and torch.allclose(got, d.encode(x + d.b_pre).float(), atol=1e-4, rtol=1e-3):
                hints.append("the input is centred first: subtract sae.b_pre from x before the encoder matrix")
            counts = (got != 0).sum(-1).float().mean()
            if d.architecture == "topk" and float(counts) > d.k + 1e-6:
                hints.append(f"your latents have {float(counts):.1f} non-zeros per token on average; at most k={d.k}")
        hint = ("; " + "; ".join(hints)) if hints else (
            ". The encoder is pre = (x - b_pre) @ W_enc + b_enc, then "
            + (f"the top k={d.k} pre-activations per token through a ReLU" if d.architecture == "topk" else "a ReLU"))
        raise Wrong(f"{exc}{hint}") from None
    l0 = float((ref > 0).sum(-1).float().mean())
    return (f"your latents match sae.encode on {x.shape[0]} tokens of {d.site} "
            f"({l0:.1f} active latents per token out of {d.d_sae})")


def _windows(model: Any, corpus: Any, n: int, context: int) -> list[list[int]]:
    """The first ``n`` full windows of ``context`` tokens (as `workbench.evaluate_dictionary` cuts them)."""
    from workbench.core.activations import token_windows

    out = []
    for w in token_windows(model.tokenizer, corpus, context):
        if len(w) != context:
            break
        out.append(w)
        if len(out) == n:
            return out
    raise Wrong(f"the checker needs {n} windows of {context} tokens from the corpus, got {len(out)}: give a larger corpus")


@exercise("06.fvu", "the fraction of variance unexplained of a reconstruction")
def check_fvu(answer: Any, model: Any, dictionary: Any, corpus: Any = None) -> str:
    """``answer(x, x_hat) -> float``: FVU over tokens ``x, x_hat [n, d]``, compared with `evaluate_dictionary`'s ``fvu``."""
    from workbench.core.corpus import default_corpus
    from workbench.dictionaries.evaluate import evaluate_dictionary

    _check_dictionary(dictionary)
    d = dictionary
    texts = list(corpus) if corpus is not None else default_corpus(max_passages=40)
    rows = _windows(model, texts, _WINDOWS, _CONTEXT)
    ref = evaluate_dictionary(model, d, texts, max_tokens=_WINDOWS * (_CONTEXT - 1), context=_CONTEXT,
                              batch_size=_WINDOWS, progress=False)
    res = model.run(model.batch_from_ids(rows), capture=[d.site], top_k=0, logits=None)
    x = res.activations[d.site][:, 1:].reshape(-1, d.d_in).float()  # position 0 (an attention sink) is left out
    x_hat = d.forward(x)[0].float()
    raw = attempt(answer, x.clone(), x_hat.clone(), what="your fvu")
    got_t = as_tensor(raw, "your FVU")
    if got_t.numel() != 1:
        raise Wrong(f"your FVU should be one number, got a tensor of shape {tuple(got_t.shape)}")
    got = float(got_t.reshape(()))
    if abs(got - ref.fvu) <= 1e-3 * abs(ref.fvu) + 1e-5:
        return (f"your FVU {got:.4f} matches evaluate_dictionary's {ref.fvu:.4f} on the same {x.shape[0]} tokens "
                f"(explained variance {1 - ref.fvu:.1%})")
    x64, h64 = x.double(), x_hat.double()
    err = float(((x64 - h64) ** 2).sum())
    hints = {
        "you divided by the sum of squares of x; the FVU's denominator is the variance around the mean activation "
        "(subtract x.mean(0) first)": err / float((x64 ** 2).sum()),
        "that is the mean of each token's own ratio; the FVU is one ratio of sums over all tokens":
            float((((x64 - h64) ** 2).sum(-1) / ((x64 - x64.mean(0)) ** 2).sum(-1).clamp_min(1e-30)).mean()),
        "that is the explained variance (1 - FVU)": 1 - ref.fvu,
        "the mean is over tokens (dim 0), not over each token's units": err / float(((x64 - x64.mean(-1, keepdim=True)) ** 2).sum()),
    }
    why = next((h for h, v in hints.items() if abs(got - v) <= 1e-3 * abs(v) + 1e-6), None)
    raise Wrong(f"your FVU is {got:.5g}, expected {ref.fvu:.5g} (sum over tokens of |x - x_hat|^2 divided by the "
                f"sum of |x - mean(x)|^2)" + (f": {why}" if why else "")
                + f"; x and x_hat are [{x.shape[0]}, {x.shape[1]}] (tokens, units)")
